"""Deletes are tombstones (``deleted_at`` + version), so that an older upsert arriving
later still loses; a delete for a row never seen leaves a tombstone too, and deleting a
parent deletes its children (its sets replaced by empty ones).

A tombstone is the delete's version and nothing else, so its content does not depend on
arrival order: ``deleted_at`` is the delete's own time (its version's ``at``, not when the
batch ran), the content columns are cleared (``extra`` too) and the version columns are
the delete's. An upsert then a delete, a delete then an older upsert, two deletes in
either order: the same row (``tests/transform/test_version_order.py``). Only
``updated_at`` says when Ponte wrote it, and derived columns (the classification's) are
not the transform's to clear."""

from __future__ import annotations

from typing import Any

import asyncpg
import sqlalchemy as sa

from ponte.shared.crm_model import crm_model
from ponte.transform.repository.changes import ChangeEvent
from ponte.transform.repository.child_sets import record_child_sets, tombstone_children
from ponte.transform.repository.grouping import Pending
from ponte.transform.repository.parking import unpark_rows
from ponte.transform.repository.state import BatchState
from ponte.transform.repository.statements import insert_rows, update_rows
from ponte.transform.repository.tables import content_columns

_BOOKKEEPING = (
    "version_at",
    "version_seq",
    "version_event_id",
    "mapping_digest",
    "deleted_at",
    "extra",
    "updated_at",
)
"""What a delete writes over a stored row besides clearing its content."""


async def tombstone(
    batch: BatchState,
    entity: str,
    table: sa.Table,
    items: list[tuple[Pending, asyncpg.Record | None]],
) -> None:
    """Delete ``items`` (roots of ``entity`` newer than what is stored) as tombstones."""
    rows = [_tombstone_row(batch, table, item) for item, _ in items]
    # A delete for a row never seen still leaves a tombstone, so an older upsert that
    # arrives later cannot bring it to life.
    new = [row for row, (_, stored) in zip(rows, items, strict=True) if stored is None]
    old = [
        (row, stored) for row, (_, stored) in zip(rows, items, strict=True) if stored is not None
    ]
    inserted = await insert_rows(batch.connection, table, new)
    # A tombstone is a row too: children parked waiting for it resolve to it, as they
    # would had they arrived after it (and are then dropped with it, below).
    batch.arrived[entity].update((row["source_id"], row["source_key"]) for row in inserted)
    written = await update_rows(
        batch.connection,
        table,
        [
            ({k: row[k] for k in (*_BOOKKEEPING, *content_columns(table))}, stored)
            for row, stored in old
        ],
    )
    _record_deleted(batch, entity, items, written)
    # A deleted row waits for nothing.
    await unpark_rows(batch.connection, entity, [row["id"] for row in written])
    await _delete_children(batch, entity, written, inserted)


def _tombstone_row(batch: BatchState, table: sa.Table, item: Pending) -> dict[str, Any]:
    version = item.record.version
    return {
        "source_id": item.record.source_id,
        "source_table": item.row.source_table,
        "source_key": item.row.source_key,
        "version_at": version.at,
        "version_seq": version.seq,
        "version_event_id": version.event_id,
        "mapping_digest": item.record.mapping_digest,
        "deleted_at": version.at or batch.now,
        "extra": {},
        "updated_at": batch.now,
        **dict.fromkeys(content_columns(table)),
    }


def _record_deleted(
    batch: BatchState,
    entity: str,
    items: list[tuple[Pending, asyncpg.Record | None]],
    written: list[asyncpg.Record],
) -> None:
    """Remember the stored rows just tombstoned; a change event for those that were not
    deleted already."""
    written_by_key = {(row["source_id"], row["source_key"]): row for row in written}
    for item, stored in items:
        if stored is None:
            continue
        row = written_by_key[item.key]
        batch.remember(entity, row["source_id"], row["source_key"], row["id"])
        if stored["deleted_at"] is None:
            batch.result.changes.append(
                ChangeEvent.of(entity, row, "delete", item.record.version, ["deleted_at"])
            )


async def _delete_children(
    batch: BatchState,
    entity: str,
    written: list[asyncpg.Record],
    inserted: list[asyncpg.Record],
) -> None:
    """Deleting a parent deletes its children (none kept): a set replaced by an empty
    one, for every child table; for a parent created now, at the end of the batch."""
    for child_entity, column in crm_model().children_of(entity):
        await record_child_sets(batch, child_entity, [*written, *inserted])
        await tombstone_children(
            batch, child_entity, column, [(dict(row), set()) for row in written]
        )
        batch.new_parent_sets += [(child_entity, column, dict(row), set()) for row in inserted]
