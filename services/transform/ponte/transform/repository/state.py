"""What one batch has learnt so far, shared by the steps that apply it: the ids of rows it
has seen, the records that lost, the rows that arrived (parked references may now
resolve), the child sets deferred to the end of the batch, and the result."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ponte.shared.db import DbConnection
from ponte.transform.repository.changes import BatchResult
from ponte.transform.repository.tables import RowIdentity, RowKey

DeferredSet = tuple[str, str, Mapping[str, Any], set[str]]
"""(child entity, parent column, parent row, kept keys): a set to apply after resolution."""


@dataclass
class BatchState:
    """One batch on one connection (inside the caller's transaction), written at ``now``."""

    connection: DbConnection
    now: datetime
    ids: dict[RowIdentity, int] = field(default_factory=dict)
    """(entity, source_id, source_key) -> row id, for rows seen in this batch."""
    stale: set[tuple[str, str, str]] = field(default_factory=set)
    """Records (``NormalizedRecord.identity``) that lost at their root."""
    result: BatchResult = field(default_factory=BatchResult)
    arrived: dict[str, set[RowKey]] = field(default_factory=lambda: defaultdict(set))
    """Rows created in this batch, by entity: parked references may now resolve."""
    new_parent_sets: list[DeferredSet] = field(default_factory=list)
    """Child sets of parents created in this batch: no child points at them yet, but
    children parked waiting for them will once the parked references are resolved."""
    resolved_children: set[tuple[str, str, int]] = field(default_factory=set)
    """(child entity, parent column, parent id) of parked children resolved now."""
    waiting_because: dict[RowIdentity, str] = field(default_factory=dict)
    """Why a reference could not be resolved, when it is not simply absent (``target``
    keys of ``normalize.Reference``): shown with the parked reference."""
    reprocess: bool = False
    """The batch re-applies received events (``ponte reprocess``): a parent rewritten at
    an equal version drops the children of that same version its set no longer has."""

    def remember(self, entity: str, source_id: str, source_key: str, row_id: int) -> None:
        self.ids[(entity, source_id, source_key)] = row_id
