"""What applying a batch changed: one change event per row written (the caller puts them
in the outbox in the same transaction), which columns changed, and the batch's counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ponte.shared.versions import Version


@dataclass
class ChangeEvent:
    """One committed change to one row, for the changes topic."""

    entity: str
    source_id: str
    source_key: str
    row_id: int
    operation: str
    version: Version | None
    changed: list[str]
    row: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.entity}/{self.source_id}/{self.source_key}"

    @classmethod
    def of(
        cls,
        entity: str,
        row: Mapping[str, Any] | asyncpg.Record,
        operation: str,
        version: Version | None,
        changed: list[str],
    ) -> ChangeEvent:
        """The change event of a row as written (a record from RETURNING, or the values)."""
        return cls(
            entity,
            row["source_id"],
            row["source_key"],
            row["id"],
            operation,
            version,
            changed,
            dict(row),
        )


@dataclass
class BatchResult:
    changes: list[ChangeEvent] = field(default_factory=list)
    applied_records: int = 0
    stale_records: int = 0
    parked: int = 0
    resolved: int = 0


_NOT_CONTENT = frozenset(
    {
        "id",
        "source_id",
        "source_table",
        "source_key",
        "version_at",
        "version_seq",
        "version_event_id",
        # A digest alone changing (a reprocess rewriting the same content) is no change.
        "mapping_digest",
        "updated_at",
    }
)


def changed_columns(
    row: Mapping[str, Any] | asyncpg.Record, stored: Mapping[str, Any] | asyncpg.Record | None
) -> list[str]:
    """Columns whose value differs from what was stored (the filled ones, for a new row)."""
    if stored is None:
        return sorted(
            k for k in row.keys() if k not in _NOT_CONTENT and row[k] is not None and row[k] != {}
        )
    return sorted(k for k in row.keys() if k not in _NOT_CONTENT and row[k] != stored[k])
