"""Collapsing a batch before anything is written: the newest version of each record, its
rows grouped by entity, and the newest version of each row when two records write it,
because a superseded version would lose against the newest one anyway."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ponte.transform.normalize import NormalizedRecord, NormalizedRow
from ponte.transform.repository.tables import RowKey


@dataclass
class Pending:
    """One row of one record, waiting to be written."""

    record: NormalizedRecord
    row: NormalizedRow

    @property
    def key(self) -> RowKey:
        return (self.record.source_id, self.row.source_key)


def coalesce(records: list[NormalizedRecord]) -> list[NormalizedRecord]:
    """Keep the newest version of each record in the batch (superseded ones would lose
    against it anyway), in first-seen order."""
    latest: dict[tuple[str, str, str], NormalizedRecord] = {}
    for record in records:
        key = (record.source_id, record.root.entity, record.root.source_key)
        current = latest.get(key)
        if current is None or record.version.newer_than(current.version):
            latest[key] = record
    return list(latest.values())


def by_entity(records: list[NormalizedRecord]) -> dict[str, list[Pending]]:
    """The records' rows grouped in one pass (in record order, then row order within a
    record), for the caller to apply in the model's order."""
    grouped: dict[str, list[Pending]] = defaultdict(list)
    for record in records:
        for row in record.rows:
            grouped[row.entity].append(Pending(record, row))
    return grouped


def newest_per_row(pending: list[Pending], stale: set[tuple[str, str, str]]) -> list[Pending]:
    """Two records of one batch can write the same row (an order carrying its items,
    and an item sent on its own): only the newest version is written. A record whose
    root loses here is stale as a whole (added to ``stale``)."""
    newest: dict[RowKey, Pending] = {}
    for item in pending:
        if item.record.identity in stale:
            continue
        key = item.key
        current = newest.get(key)
        if current is None or item.record.version.newer_than(current.record.version):
            if current is not None and current.row.depth == 0:
                stale.add(current.record.identity)
            newest[key] = item
        elif item.row.depth == 0:
            stale.add(item.record.identity)
    return list(newest.values())
