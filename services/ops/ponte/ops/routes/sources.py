"""``/ops/sources``: each source's "Informações Gerais", its edits and its onboarding check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ValidationError

from ponte.ops.auth import Operator
from ponte.ops.deps import BoxDep, PullsDep
from ponte.ops.edits import SourcePatch, UnknownSource, apply_patch
from ponte.ops.onboarding import Onboarding, onboarding
from ponte.ops.status import SourceStatus, source_ids, source_status
from ponte.shared.deps import PoolDep, SettingsDep
from ponte.shared.ops_token import UNAUTHORIZED
from ponte.shared.problems import field_problems, invalid
from ponte.shared.rejections import Rejection

router = APIRouter(prefix="/ops/sources", tags=["sources"], responses=UNAUTHORIZED)

SourceId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Source id.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No source with this id."}}


class SourceList(BaseModel):
    count: int
    items: list[SourceStatus]


class PatchResult(BaseModel):
    changed: list[str]
    source: SourceStatus


def not_found(source_id: str) -> Rejection:
    return Rejection(404, "unknown_source", f"no source {source_id!r}", field="path.source_id")


@router.get("", summary="Every source's general information and status")
async def list_sources(pool: PoolDep, pulls: PullsDep, box: BoxDep, _: Operator) -> SourceList:
    items = [
        status
        for source_id in await source_ids(pool)
        if (status := await source_status(pool, source_id, pulls=pulls, box=box)) is not None
    ]
    return SourceList(count=len(items), items=items)


@router.get("/{source_id}", summary="One source's general information", responses=NOT_FOUND)
async def get_source(
    source_id: SourceId, pool: PoolDep, pulls: PullsDep, box: BoxDep, _: Operator
) -> SourceStatus:
    status = await source_status(pool, source_id, pulls=pulls, box=box)
    if status is None:
        raise not_found(source_id)
    return status


@router.patch(
    "/{source_id}",
    summary="Change a source (audited; ingest applies it within sources_refresh_s)",
    responses={**NOT_FOUND, 422: {"description": "A field is invalid; the error names it."}},
)
async def patch_source(
    source_id: SourceId,
    patch: SourcePatch,
    pool: PoolDep,
    pulls: PullsDep,
    box: BoxDep,
    actor: Operator,
) -> PatchResult:
    try:
        changed = await apply_patch(pool, source_id, patch, actor=actor, box=box)
    except UnknownSource:
        raise not_found(source_id) from None
    except ValidationError as error:  # the combined source would not load in ingest
        raise invalid(field_problems(error.errors(include_input=False), prefix=["body"])) from None
    status = await source_status(pool, source_id, pulls=pulls, box=box)
    assert status is not None  # it was just updated inside a transaction
    return PatchResult(changed=changed, source=status)


@router.get(
    "/{source_id}/onboarding",
    summary="Per table: received, stored, parked, delivered, failed",
    responses=NOT_FOUND,
)
async def get_onboarding(
    source_id: SourceId, pool: PoolDep, settings: SettingsDep, _: Operator
) -> Onboarding:
    if await pool.fetchval("SELECT 1 FROM sources WHERE id = $1", source_id) is None:
        raise not_found(source_id)
    return await onboarding(pool, source_id, settings.history_retention_days)
