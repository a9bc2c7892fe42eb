"""The audit trail of the ops API: who changed which field of what, when, old -> new.

Written in the same transaction as the change it records, so there is no change without
its audit row. Secrets are recorded as fingerprints (``ponte.ops.fingerprints``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel

from ponte.shared.db import DbConnection


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    source_id: str | None
    field: str
    old_value: Any
    new_value: Any


async def record(
    connection: DbConnection,
    *,
    at: datetime,
    actor: str,
    source_id: str | None,
    field: str,
    old: Any,
    new: Any,
) -> None:
    await connection.execute(
        "INSERT INTO ops_audit (at, actor, source_id, field, old_value, new_value) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        at,
        actor,
        source_id,
        field,
        old,
        new,
    )


async def entries(pool: asyncpg.Pool, *, source_id: str | None, limit: int) -> list[AuditEntry]:
    rows = await pool.fetch(
        "SELECT * FROM ops_audit WHERE ($1::text IS NULL OR source_id = $1) "
        "ORDER BY at DESC, id DESC LIMIT $2",
        source_id,
        limit,
    )
    return [AuditEntry(**dict(row)) for row in rows]
