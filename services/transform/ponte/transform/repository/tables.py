"""The model's tables as the write path sees them: a table per entity, the typed array a
column is sent as, which child column points at which parent, and a stored row's version;
kept apart so that every statement names tables and columns the same way."""

from __future__ import annotations

from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ponte.shared.crm_model import BOOKKEEPING_COLUMNS, crm_model
from ponte.shared.versions import Version

RowKey = tuple[str, str]
"""(source_id, source_key)"""

RowIdentity = tuple[str, str, str]
"""(entity, source_id, source_key)"""

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def table_of(entity: str) -> sa.Table:
    return crm_model().table(entity)


def parent_of(entity: str) -> tuple[str, str] | None:
    """(parent entity, the child's column holding the parent's id) of a child entity."""
    return crm_model().parent_of(entity)


def content_columns(table: sa.Table, keep: str | None = None) -> list[str]:
    """The columns a version writes (not bookkeeping, not derived): what a tombstone
    clears, keeping ``keep`` (a dropped child's link to its parent)."""
    model = crm_model()
    entity = model.entity_of_table(table.name)
    assert entity is not None, f"{table.name} is not an entity's table"
    skip = BOOKKEEPING_COLUMNS | model.entity(entity).derived | {keep}
    return [column.name for column in table.columns if column.name not in skip]


def array_type(column: sa.Column[Any]) -> str:
    return f"{column.type.compile(dialect=_DIALECT)}[]"


def version_of(row: asyncpg.Record | None) -> Version | None:
    """A stored row's version (None: never written by an event, e.g. a stub)."""
    if row is None or row["version_event_id"] is None:
        return None
    return Version(row["version_at"], row["version_seq"], row["version_event_id"])
