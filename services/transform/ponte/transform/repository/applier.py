"""``BatchApplier``: one batch applied entity by entity in the model's order (parents
before the rows that point at them), each row sorted into stale, upsert or tombstone
against the stored version; then the parked references the batch resolves and the child
sets that waited for them. The rules are in the package docstring."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from ponte.shared.crm_model import crm_model
from ponte.shared.db import DbConnection
from ponte.shared.events import Operation
from ponte.shared.versions import applies
from ponte.transform.normalize import NormalizedRecord
from ponte.transform.repository.changes import BatchResult
from ponte.transform.repository.child_sets import (
    drop_older_than_child_sets,
    replace_children_of_new_parents,
)
from ponte.transform.repository.grouping import Pending, by_entity, coalesce, newest_per_row
from ponte.transform.repository.guests import converge_guests
from ponte.transform.repository.parking import resolve_parked
from ponte.transform.repository.state import BatchState
from ponte.transform.repository.statements import fetch_existing
from ponte.transform.repository.tables import parent_of, table_of, version_of
from ponte.transform.repository.tombstones import tombstone
from ponte.transform.repository.upserts import Stored, upsert


class BatchApplier:
    """Applies one batch on one connection (inside the caller's transaction)."""

    def __init__(self, connection: DbConnection, now: datetime | None = None) -> None:
        self.batch = BatchState(connection, now or datetime.now(UTC))

    @property
    def connection(self) -> DbConnection:
        return self.batch.connection

    @property
    def now(self) -> datetime:
        return self.batch.now

    @property
    def result(self) -> BatchResult:
        return self.batch.result

    async def apply(self, records: list[NormalizedRecord]) -> BatchResult:
        # A shop's guest contact and its registered contact are one (``guests``).
        records = coalesce(await converge_guests(self.batch, records))
        self.batch.reprocess = any(record.reprocess for record in records)
        grouped = by_entity(records)
        for entity in crm_model().entities:
            pending = grouped.get(entity)
            if pending:
                await self._apply_entity(entity, pending)
        await resolve_parked(self.batch)
        await replace_children_of_new_parents(self.batch)
        self.result.stale_records = len(self.batch.stale)
        self.result.applied_records = len(records) - len(self.batch.stale)
        return self.result

    async def sweep_parked(self) -> BatchResult:
        await resolve_parked(self.batch, sweep=True)
        return self.result

    async def _apply_entity(self, entity: str, pending: list[Pending]) -> None:
        table = table_of(entity)
        existing = await fetch_existing(self.connection, table, [p.key for p in pending])
        if parent_of(entity) is not None:
            await drop_older_than_child_sets(self.batch, entity, pending)
        upserts: list[Stored] = []
        deletes: list[Stored] = []
        for item in newest_per_row(pending, self.batch.stale):
            if item.record.identity in self.batch.stale:
                continue
            stored = existing.get(item.key)
            if not applies(
                item.record.version,
                item.record.mapping_digest,
                version_of(stored),
                None if stored is None else stored["mapping_digest"],
                reprocess=item.record.reprocess,
            ):
                self._not_newer(entity, item, stored)
                continue
            if item.record.operation is Operation.DELETE and item.row.depth == 0:
                deletes.append((item, stored))
            else:
                upserts.append((item, stored))
        if upserts:
            await upsert(self.batch, entity, table, upserts)
        if deletes:
            await tombstone(self.batch, entity, table, deletes)

    def _not_newer(self, entity: str, item: Pending, stored: asyncpg.Record | None) -> None:
        """A row no newer than the stored one: at the root the whole record is stale; a
        nested row is left as stored (its id still known to the rows that point at it)."""
        if item.row.depth == 0:
            self.batch.stale.add(item.record.identity)
        elif stored is not None:
            self.batch.remember(entity, item.record.source_id, item.row.source_key, stored["id"])
