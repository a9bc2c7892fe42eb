"""``/ops/replay``: ``ponte replay`` over HTTP, for integration developers after a fix."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ponte.ops import audit
from ponte.ops.auth import Operator
from ponte.ops.moments import IsoAwareDatetime
from ponte.shared.deps import PoolDep, SettingsDep
from ponte.shared.ops_token import UNAUTHORIZED
from ponte.shared.replay import Replayed, replay

router = APIRouter(prefix="/ops/replay", tags=["replay"], responses=UNAUTHORIZED)

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ReplayRequest(BaseModel):
    """The selectors of ``ponte replay``; all optional, combined with AND."""

    model_config = ConfigDict(extra="forbid")

    target_id: str | None = Field(default=None, pattern=_ID)
    entity: str | None = Field(default=None, pattern=_ID)
    source_id: str | None = Field(default=None, pattern=_ID)
    since: IsoAwareDatetime | None = Field(default=None, description="Failed at or after.")
    until: IsoAwareDatetime | None = Field(default=None, description="Failed at or before.")
    external_ids: list[str] | None = Field(default=None, max_length=10_000)
    dry_run: StrictBool = Field(
        default=True,
        description="Only list what would be replayed. A real replay needs JSON `false`: "
        'strict, so 0, "false" or "no" are a 422 rather than a replay.',
    )


class ReplayedChange(BaseModel):
    target: str
    external_id: str
    reason: str
    failed_at: str


class ReplayResult(BaseModel):
    dry_run: bool
    count: int
    items: list[ReplayedChange]


def _item(replayed: Replayed) -> ReplayedChange:
    return ReplayedChange(
        target=replayed.target,
        external_id=replayed.external_id,
        reason=replayed.reason,
        failed_at=replayed.failed_at,
    )


@router.post("", summary="Replay dead-lettered changes (dry run by default)")
async def replay_changes(
    selection: ReplayRequest, settings: SettingsDep, pool: PoolDep, actor: Operator
) -> ReplayResult:
    replayed = await replay(
        settings,
        target_id=selection.target_id,
        entity=selection.entity,
        source_id=selection.source_id,
        since=selection.since,
        until=selection.until,
        external_ids=set(selection.external_ids) if selection.external_ids else None,
        dry_run=selection.dry_run,
    )
    if not selection.dry_run:
        async with pool.acquire() as connection:
            await audit.record(
                connection,
                at=datetime.now(UTC),
                actor=actor,
                source_id=selection.source_id,
                field="replay",
                old=None,
                new={
                    "selection": selection.model_dump(mode="json", exclude={"dry_run"}),
                    "replayed": len(replayed),
                },
            )
    return ReplayResult(
        dry_run=selection.dry_run, count=len(replayed), items=[_item(item) for item in replayed]
    )
