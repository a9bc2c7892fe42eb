"""``/ops/replay``: ``ponte replay`` over HTTP, for integration developers after a fix.
The same selection and the same code (``ponte.shared.replay.run``), every stage."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ponte.ops import audit
from ponte.ops.auth import Operator
from ponte.ops.moments import IsoAwareDatetime
from ponte.shared.deps import PoolDep, SettingsDep
from ponte.shared.ops_token import UNAUTHORIZED
from ponte.shared.replay.items import STAGES, Item, Stage
from ponte.shared.replay.run import Report, replay
from ponte.shared.replay.selection import Selection

router = APIRouter(prefix="/ops/replay", tags=["replay"], responses=UNAUTHORIZED)

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ReplayRequest(BaseModel):
    """The selectors of ``ponte replay``; all optional, combined with AND."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal["transform", "deliver", "status", "all"] = Field(
        default="all", description="Whose dead letters."
    )
    target_id: str | None = Field(
        default=None, pattern=_ID, description="Only this target's (deliver, status)."
    )
    entity: str | None = Field(
        default=None, pattern=_ID, description="Only this entity (deliver, status)."
    )
    table: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Only this source table (transform), as the source names it, or "
        "entity (deliver, status): the column `entity` selects too, combined with AND.",
    )
    source_id: str | None = Field(default=None, pattern=_ID)
    since: IsoAwareDatetime | None = Field(default=None, description="Failed at or after.")
    until: IsoAwareDatetime | None = Field(default=None, description="Failed at or before.")
    reason: str | None = Field(
        default=None, min_length=1, max_length=500, description="A part of the reason, any case."
    )
    event_ids: list[str] | None = Field(default=None, max_length=10_000)
    external_ids: list[str] | None = Field(
        default=None, max_length=10_000, description="Dead-letter keys (`source/entity/key`)."
    )
    dry_run: StrictBool = Field(
        default=True,
        description="Only list what would be replayed. A real replay needs JSON `false`: "
        'strict, so 0, "false" or "no" are a 422 rather than a replay.',
    )

    def selection(self) -> Selection:
        stages: tuple[Stage, ...] = STAGES if self.stage == "all" else (self.stage,)
        return Selection(
            stages=stages,
            source_id=self.source_id,
            table=self.table,
            entity=self.entity,
            target_id=self.target_id,
            since=self.since,
            until=self.until,
            reason=self.reason,
            event_ids=frozenset(self.event_ids or ()),
            keys=frozenset(self.external_ids or ()),
        )


class ReplayedDeadLetter(BaseModel):
    stage: Stage
    source: str
    table: str = Field(description="The entity (deliver, status) or source table (transform).")
    external_id: str = Field(description="The dead letter's key.")
    target: str
    event_id: str
    reason: str
    failed_at: str
    dead_letter: str = Field(description="Where it stands: topic/partition/offset.")
    not_replayable: str | None = Field(description="Why it cannot go back; null if it can.")


class StageCount(BaseModel):
    listed: int
    replayable: int


class ReplayResult(BaseModel):
    dry_run: bool
    count: int = Field(description="Dead letters replayed (or that would be).")
    messages: int = Field(description="Messages sent (or that would be); repeats go once.")
    stages: dict[Stage, StageCount]
    items: list[ReplayedDeadLetter]


def _item(item: Item) -> ReplayedDeadLetter:
    """The listing as the API names it: the dead letter's key is its ``external_id``."""
    fields = asdict(item)
    fields["external_id"] = fields.pop("key")
    return ReplayedDeadLetter(**fields)


def _result(report: Report) -> ReplayResult:
    return ReplayResult(
        dry_run=report.dry_run,
        count=report.replayable,
        messages=report.messages,
        stages={
            stage: StageCount(listed=count.listed, replayable=count.replayable)
            for stage, count in report.counts().items()
        },
        items=[_item(item) for item in report.items],
    )


@router.post("", summary="Replay dead letters of any stage (dry run by default)")
async def replay_dead_letters(
    selection: ReplayRequest, settings: SettingsDep, pool: PoolDep, actor: Operator
) -> ReplayResult:
    report = await replay(settings, selection.selection(), dry_run=selection.dry_run)
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
                    "replayed": report.replayable,
                },
            )
    return _result(report)
