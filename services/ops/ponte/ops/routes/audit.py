"""``/ops/audit``: who changed what through the ops API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ponte.ops import audit
from ponte.ops.auth import Operator
from ponte.shared.deps import PoolDep
from ponte.shared.ops_token import UNAUTHORIZED
from ponte.shared.probes import IdQuery

router = APIRouter(prefix="/ops/audit", tags=["audit"], responses=UNAUTHORIZED)


class AuditList(BaseModel):
    items: list[audit.AuditEntry]


@router.get("", summary="The audit trail, newest first")
async def list_audit(
    pool: PoolDep,
    _: Operator,
    source_id: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    return AuditList(items=await audit.entries(pool, source_id=source_id, limit=limit))
