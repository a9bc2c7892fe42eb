"""The model's tables as the write path sees them: a table per entity, the typed array a
column is sent as, which child column points at which parent, and a stored row's version;
kept apart so that every statement names tables and columns the same way."""

from __future__ import annotations

from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import SQLModel

from ponte.shared.crm import BOOKKEEPING_COLUMNS, CHILDREN, DERIVED_COLUMNS, ENTITIES
from ponte.shared.versions import Version

RowKey = tuple[str, str]
"""(source_id, source_key)"""

RowIdentity = tuple[str, str, str]
"""(entity, source_id, source_key)"""

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]

PARENT_OF: dict[str, tuple[str, str]] = {
    child: (parent, column) for parent, children in CHILDREN.items() for child, column in children
}
"""child entity -> (parent entity, the child's column holding the parent's id)"""


def table_of(entity: str) -> sa.Table:
    table_name = str(ENTITIES[entity].__tablename__)
    return SQLModel.metadata.tables[table_name]


def content_columns(table: sa.Table, keep: str | None = None) -> list[str]:
    """The columns a version writes (not bookkeeping, not derived): what a tombstone
    clears, keeping ``keep`` (a dropped child's link to its parent)."""
    entity = next(name for name, model in ENTITIES.items() if model.__tablename__ == table.name)
    skip = BOOKKEEPING_COLUMNS | DERIVED_COLUMNS.get(entity, frozenset()) | {keep}
    return [column.name for column in table.columns if column.name not in skip]


def array_type(column: sa.Column[Any]) -> str:
    return f"{column.type.compile(dialect=_DIALECT)}[]"


def version_of(row: asyncpg.Record | None) -> Version | None:
    """A stored row's version (None: never written by an event, e.g. a stub)."""
    if row is None or row["version_event_id"] is None:
        return None
    return Version(row["version_at"], row["version_seq"], row["version_event_id"])
