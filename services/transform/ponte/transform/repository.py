"""Applying normalised records to PostgreSQL: versioned upserts, references, tombstones.

One call applies a whole batch inside the caller's transaction, entity by entity in the
order of ``ponte.shared.crm.ENTITIES`` (parents before children), with one round trip per
kind of statement and entity rather than per row. The rules, in the order they apply:

1. **Latest version wins.** Within the batch only the newest version of each record is
   kept; against the database a record applies only if its version (occurred_at, then
   event id) is newer than the stored one. A repeated or older event changes nothing, and
   a record that loses at its root loses as a whole (its children are not touched).
2. **The newest version is the whole row** (normalize fills unmapped-but-known columns
   with NULL), so the final state does not depend on arrival order.
3. **Deletes are tombstones** (``deleted_at`` + version), so an older upsert arriving later
   still loses; deleting a parent deletes its children.
4. **Children are a set.** A child missing from the newest version of its parent is
   tombstoned. Each parent row remembers, per child table, the version that last replaced
   its set (``child_set_versions``: a version carrying the table, or a delete), so a child
   sent on its own that is older than that version is stale even when there is no row to
   tombstone (it never arrived before the set replaced it). A child still waiting for its
   parent (parked) when the parent arrives is dropped by that parent's set once the
   reference resolves, at the end of the batch: either arrival order ends the same.
5. **References are resolved by key.** Missing targets are either created as placeholders
   (``stub``: codes, brands, products) or *parked* (the column stays NULL and a row in
   ``parked_references`` waits); parked references are resolved as soon as their target
   arrives, in this batch or a later one.

Every row that changes produces a change event, returned to the caller, who puts it in the
outbox in the same transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import SQLModel

from ponte.shared.crm import CHILDREN, DERIVED_COLUMNS, ENTITIES
from ponte.shared.db import DbConnection
from ponte.shared.events import Operation
from ponte.transform.normalize import NormalizedRecord, NormalizedRow, Reference, Version

RowKey = tuple[str, str]
"""(source_id, source_key)"""

_KEY_COLUMNS = "id, source_id, source_key"
_T_KEY_COLUMNS = "t.id, t.source_id, t.source_key"

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]

_PARENT_OF: dict[str, tuple[str, str]] = {
    child: (parent, column) for parent, children in CHILDREN.items() for child, column in children
}
"""child entity -> (parent entity, the child's column holding the parent's id)"""

_DeferredSet = tuple[str, str, Mapping[str, Any], set[str]]
"""(child entity, parent column, parent row, kept keys): a set to apply after resolution."""


def table_of(entity: str) -> sa.Table:
    table_name = str(ENTITIES[entity].__tablename__)
    return SQLModel.metadata.tables[table_name]


def _array_type(column: sa.Column[Any]) -> str:
    return f"{column.type.compile(dialect=_DIALECT)}[]"


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


@dataclass
class _Pending:
    record: NormalizedRecord
    row: NormalizedRow


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


class BatchApplier:
    """Applies one batch on one connection (inside the caller's transaction)."""

    def __init__(self, connection: DbConnection, now: datetime | None = None) -> None:
        self.connection = connection
        self.now = now or datetime.now(UTC)
        self.ids: dict[tuple[str, str, str], int] = {}
        """(entity, source_id, source_key) -> row id, for rows seen in this batch."""
        self.stale: set[tuple[str, str, str]] = set()
        """Records that lost at their root."""
        self.result = BatchResult()
        self.arrived: dict[str, set[RowKey]] = defaultdict(set)
        """Rows created in this batch, by entity: parked references may now resolve."""
        self.new_parent_sets: list[_DeferredSet] = []
        """Child sets of parents created in this batch: no child points at them yet, but
        children parked waiting for them will once ``_resolve_parked`` runs."""
        self.resolved_children: set[tuple[str, str, int]] = set()
        """(child entity, parent column, parent id) of parked children resolved now."""

    async def apply(self, records: list[NormalizedRecord]) -> BatchResult:
        records = coalesce(records)
        # Grouped in one pass (in record order, then row order within a record), then
        # applied in the model's order: parents before the rows that point at them.
        by_entity: dict[str, list[_Pending]] = defaultdict(list)
        for record in records:
            for row in record.rows:
                by_entity[row.entity].append(_Pending(record, row))
        for entity in ENTITIES:
            pending = by_entity.get(entity)
            if pending:
                await self._apply_entity(entity, pending)
        await self._resolve_parked()
        await self._replace_children_of_new_parents()
        self.result.stale_records = len(self.stale)
        self.result.applied_records = len(records) - len(self.stale)
        return self.result

    async def sweep_parked(self) -> BatchResult:
        await self._resolve_parked(sweep=True)
        return self.result

    # --- one entity -------------------------------------------------------------------

    async def _apply_entity(self, entity: str, pending: list[_Pending]) -> None:
        table = table_of(entity)
        keys = [(p.record.source_id, p.row.source_key) for p in pending]
        existing = await self._fetch_existing(table, keys)
        if entity in _PARENT_OF:
            await self._drop_older_than_child_sets(entity, pending)
        upserts: list[tuple[_Pending, asyncpg.Record | None]] = []
        deletes: list[tuple[_Pending, asyncpg.Record | None]] = []
        for item in self._newest_per_row(pending):
            if item.record.identity in self.stale:
                continue
            stored = existing.get((item.record.source_id, item.row.source_key))
            stored_version = _version_of(stored)
            if not item.record.version.newer_than(stored_version):
                if item.row.depth == 0:
                    self.stale.add(item.record.identity)
                elif stored is not None:
                    self._remember(entity, item.record.source_id, item.row.source_key, stored["id"])
                continue
            if item.record.operation is Operation.DELETE and item.row.depth == 0:
                deletes.append((item, stored))
            else:
                upserts.append((item, stored))
        if upserts:
            await self._upsert(entity, table, upserts)
        if deletes:
            await self._tombstone(entity, table, deletes)

    def _newest_per_row(self, pending: list[_Pending]) -> list[_Pending]:
        """Two records of one batch can write the same row (an order carrying its items,
        and an item sent on its own): only the newest version is written. A record whose
        root loses here is stale as a whole."""
        newest: dict[RowKey, _Pending] = {}
        for item in pending:
            if item.record.identity in self.stale:
                continue
            key = (item.record.source_id, item.row.source_key)
            current = newest.get(key)
            if current is None or item.record.version.newer_than(current.record.version):
                if current is not None and current.row.depth == 0:
                    self.stale.add(current.record.identity)
                newest[key] = item
            elif item.row.depth == 0:
                self.stale.add(item.record.identity)
        return list(newest.values())

    async def _drop_older_than_child_sets(self, entity: str, pending: list[_Pending]) -> None:
        """A child sent on its own (not nested in a parent version) that is older than the
        version that last replaced its parent's set of these children is stale: had it
        arrived first, that version would have tombstoned it. Nested children carry their
        parent's own version, so they are never older; only lone ones are looked up, in
        one statement."""
        parent_entity, column = _PARENT_OF[entity]
        lone: dict[RowKey, list[_Pending]] = defaultdict(list)
        for item in pending:
            if item.row.depth != 0:
                continue
            for ref in item.row.references:
                if ref.column == column and ref.target_entity == parent_entity:
                    lone[(item.record.source_id, ref.target_key)].append(item)
        if not lone:
            return
        parent = table_of(parent_entity)
        rows = await self.connection.fetch(
            "SELECT p.source_id, p.source_key, c.version_at, c.version_event_id "  # noqa: S608
            f"FROM child_set_versions c JOIN {parent.name} p ON p.id = c.parent_id "
            "WHERE c.child_entity = $1 AND (p.source_id, p.source_key) IN "
            "(SELECT * FROM unnest($2::text[], $3::text[]))",
            entity,
            [k[0] for k in lone],
            [k[1] for k in lone],
        )
        for row in rows:
            set_version = Version(row["version_at"], row["version_event_id"])
            for item in lone[(row["source_id"], row["source_key"])]:
                if set_version.newer_than(item.record.version):
                    self.stale.add(item.record.identity)

    async def _fetch_existing(
        self, table: sa.Table, keys: list[RowKey]
    ) -> dict[RowKey, asyncpg.Record]:
        rows = await self.connection.fetch(
            f"SELECT * FROM {table.name} WHERE (source_id, source_key) IN "  # noqa: S608 - table names come from the model
            "(SELECT * FROM unnest($1::text[], $2::text[])) FOR UPDATE",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return {(row["source_id"], row["source_key"]): row for row in rows}

    def _remember(self, entity: str, source_id: str, source_key: str, row_id: int) -> None:
        self.ids[(entity, source_id, source_key)] = row_id

    # --- upserts ----------------------------------------------------------------------

    async def _upsert(
        self, entity: str, table: sa.Table, items: list[tuple[_Pending, asyncpg.Record | None]]
    ) -> None:
        # A reference to a row this very statement writes (a code's parent code, a
        # spouse) cannot be resolved before it; it is parked and resolved at batch end.
        being_written = {(entity, item.record.source_id, item.row.source_key) for item, _ in items}
        resolved = await self._resolve_references(
            [(item.record.source_id, ref) for item, _ in items for ref in item.row.references],
            being_written,
        )
        inserts: list[dict[str, Any]] = []
        updates: list[tuple[dict[str, Any], asyncpg.Record]] = []
        parks: list[tuple[_Pending, Reference]] = []
        for item, stored in items:
            values = dict(item.row.values)
            for ref in item.row.references:
                target = resolved.get((ref.target_entity, item.record.source_id, ref.target_key))
                values[ref.column] = target
                if target is None:
                    parks.append((item, ref))
            values.update(
                source_id=item.record.source_id,
                source_table=item.row.source_table,
                source_key=item.row.source_key,
                version_at=item.record.version.at,
                version_event_id=item.record.version.event_id,
                deleted_at=None,
                extra=item.row.extra,
                updated_at=self.now,
            )
            if stored is None:
                inserts.append(values)
            else:
                updates.append((values, stored))
        # Only ids come back: the rows are what was just written (over the stored row for
        # an update), which spares decoding every column PostgreSQL would echo.
        ids = {
            (r["source_id"], r["source_key"]): r["id"]
            for r in await self._insert_rows(table, inserts, returning=_KEY_COLUMNS)
        }
        # Derived columns (an ABC class) are not the transform's: they come back as the
        # row holds them now, so a change event never carries a value the classification
        # job replaced meanwhile.
        derived = sorted(DERIVED_COLUMNS.get(entity, ()))
        returning = ", ".join([_T_KEY_COLUMNS, *(f"t.{column}" for column in derived)])
        updated = await self._update_rows(table, updates, returning=returning)
        ids.update({(r["source_id"], r["source_key"]): r["id"] for r in updated})
        now_derived = {(r["source_id"], r["source_key"]): r for r in updated}
        by_key: dict[RowKey, dict[str, Any]] = {}
        for values in inserts:
            by_key[(values["source_id"], values["source_key"])] = values
        for values, stored in updates:
            key = (values["source_id"], values["source_key"])
            by_key[key] = {**dict(stored), **values}
            by_key[key].update({column: now_derived[key][column] for column in derived})
        for item, stored in items:
            key = (item.record.source_id, item.row.source_key)
            row = by_key[key]
            row["id"] = ids[key]
            self._remember(entity, row["source_id"], row["source_key"], row["id"])
            if stored is None:
                self.arrived[entity].add(key)
            changed = _changed_columns(row, stored)
            if changed:
                self.result.changes.append(
                    ChangeEvent.of(entity, row, "upsert", item.record.version, changed)
                )
        await self._park(
            entity,
            [(by_key[(i.record.source_id, i.row.source_key)]["id"], i, ref) for i, ref in parks],
            # Only a stored row can have parked references of an older version: a row
            # inserted just now has a fresh id nothing was parked under.
            [by_key[(i.record.source_id, i.row.source_key)]["id"] for i, s in items if s],
        )
        await self._replace_children(items, by_key)

    async def _insert_rows(
        self,
        table: sa.Table,
        rows: list[dict[str, Any]],
        returning: str = "*",
        conflict: str = "",
    ) -> list[asyncpg.Record]:
        """One INSERT for all rows: a typed array per column, ``unnest`` into rows."""
        if not rows:
            return []
        columns = sorted({column for row in rows for column in row})
        arrays = [[row.get(column) for row in rows] for column in columns]
        casts = ", ".join(
            f"${i + 1}::{_array_type(table.c[column])}" for i, column in enumerate(columns)
        )
        names = ", ".join(columns)
        sql = (
            f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({casts}) "  # noqa: S608
            f"{conflict} RETURNING {returning}"
        )
        return await self.connection.fetch(sql, *arrays)

    async def _update_rows(
        self,
        table: sa.Table,
        rows: list[tuple[dict[str, Any], asyncpg.Record]],
        returning: str = "t.*",
    ) -> list[asyncpg.Record]:
        # Rows from different source tables may write different columns: one statement per
        # column set.
        groups: dict[tuple[str, ...], list[tuple[dict[str, Any], asyncpg.Record]]] = defaultdict(
            list
        )
        for values, stored in rows:
            groups[tuple(sorted(values))].append((values, stored))
        written: list[asyncpg.Record] = []
        for columns, members in groups.items():
            arrays = [[stored["id"] for _, stored in members]]
            arrays += [[values[column] for values, _ in members] for column in columns]
            casts = ", ".join(
                [f"$1::{_array_type(table.c.id)}"]
                + [f"${i + 2}::{_array_type(table.c[column])}" for i, column in enumerate(columns)]
            )
            assignments = ", ".join(f"{column} = u.{column}" for column in columns)
            names = ", ".join(("id", *columns))
            written += await self.connection.fetch(
                f"UPDATE {table.name} AS t SET {assignments} FROM unnest({casts}) "  # noqa: S608
                f"AS u({names}) WHERE t.id = u.id RETURNING {returning}",
                *arrays,
            )
        return written

    # --- references -------------------------------------------------------------------

    async def _resolve_references(
        self,
        references: list[tuple[str, Reference]],
        being_written: set[tuple[str, str, str]],
    ) -> dict[tuple[str, str, str], int]:
        """Ids of referenced rows: from this batch, from the database, or a new stub."""
        found: dict[tuple[str, str, str], int] = {}
        wanted: dict[str, dict[RowKey, Reference]] = defaultdict(dict)
        for source_id, ref in references:
            key = (ref.target_entity, source_id, ref.target_key)
            if key in self.ids:
                found[key] = self.ids[key]
            else:
                wanted[ref.target_entity][(source_id, ref.target_key)] = ref
        for entity, refs in wanted.items():
            table = table_of(entity)
            rows = await self.connection.fetch(
                f"SELECT id, source_id, source_key FROM {table.name} WHERE (source_id, "  # noqa: S608
                "source_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                [k[0] for k in refs],
                [k[1] for k in refs],
            )
            for row in rows:
                found[(entity, row["source_id"], row["source_key"])] = row["id"]
            stubs = [
                (key, ref)
                for key, ref in refs.items()
                if ref.on_missing == "stub"
                and (entity, *key) not in found
                and (entity, *key) not in being_written
            ]
            for row in await self._insert_stubs(entity, table, stubs):
                found[(entity, row["source_id"], row["source_key"])] = row["id"]
                self.arrived[entity].add((row["source_id"], row["source_key"]))
        for (target_entity, source_id, target_key), row_id in found.items():
            self._remember(target_entity, source_id, target_key, row_id)
        return found

    async def _insert_stubs(
        self, entity: str, table: sa.Table, stubs: list[tuple[RowKey, Reference]]
    ) -> list[asyncpg.Record]:
        """Placeholder rows (no version: any real event overwrites them)."""
        if not stubs:
            return []
        rows = [
            {
                "source_id": source_id,
                "source_table": f"({entity} placeholder)",
                "source_key": key,
                "extra": {},
                "updated_at": self.now,
                **ref.stub_values,
            }
            for (source_id, key), ref in stubs
        ]
        inserted = await self._insert_rows(
            table, rows, conflict="ON CONFLICT (source_id, source_key) DO NOTHING"
        )
        for row in inserted:
            self.result.changes.append(
                ChangeEvent.of(entity, row, "upsert", None, _changed_columns(row, None))
            )
        return list(inserted)

    async def _park(
        self, entity: str, parks: list[tuple[int, _Pending, Reference]], applied_ids: list[int]
    ) -> None:
        """Forget what the previous versions of these rows were waiting for; record what
        the new versions wait for."""
        if applied_ids:
            await self.connection.execute(
                "DELETE FROM parked_references WHERE entity = $1 AND row_id = ANY($2::int4[])",
                entity,
                applied_ids,
            )
        if not parks:
            return
        # One statement for all of them (a backlog parks thousands per batch).
        await self.connection.execute(
            "INSERT INTO parked_references (source_id, entity, row_id, column_name, field, "
            "target_entity, target_key, event_id, parked_at) "
            "SELECT source_id, $1::text, row_id, column_name, field, target_entity, "
            "target_key, event_id, $2::timestamptz FROM unnest($3::text[], $4::int4[], "
            "$5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) AS p(source_id, "
            "row_id, column_name, field, target_entity, target_key, event_id)",
            entity,
            self.now,
            [item.record.source_id for _, item, _ in parks],
            [row_id for row_id, _, _ in parks],
            [ref.column for _, _, ref in parks],
            [ref.field for _, _, ref in parks],
            [ref.target_entity for _, _, ref in parks],
            [ref.target_key for _, _, ref in parks],
            [item.record.event_id for _, item, _ in parks],
        )
        self.result.parked += len(parks)

    async def _resolve_parked(self, *, sweep: bool = False) -> None:
        """Point waiting rows at targets that arrived in this batch (or, with ``sweep``,
        at any target that exists now: catches a target committed by another replica
        while this one was parking a reference to it)."""
        entities = list(ENTITIES) if sweep else list(self.arrived)
        for target_entity in entities:
            target = table_of(target_entity)
            keys = self.arrived.get(target_entity, set())
            waiting = await self.connection.fetch(
                f"DELETE FROM parked_references p USING {target.name} t "  # noqa: S608
                "WHERE p.target_entity = $1 AND t.source_id = p.source_id "
                "AND t.source_key = p.target_key AND ($4 OR (p.source_id, p.target_key) IN "
                "(SELECT * FROM unnest($2::text[], $3::text[]))) "
                "RETURNING p.entity, p.row_id, p.column_name, t.id AS target_id",
                target_entity,
                [k[0] for k in keys],
                [k[1] for k in keys],
                sweep,
            )
            groups: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
            for row in waiting:
                groups[(row["entity"], row["column_name"])].append(row)
                self.resolved_children.add((row["entity"], row["column_name"], row["target_id"]))
            for (entity, column), rows in groups.items():
                table = table_of(entity)
                updated = await self.connection.fetch(
                    f"UPDATE {table.name} AS t SET {column} = u.target, updated_at = $3 "  # noqa: S608
                    "FROM unnest($1::int4[], $2::int4[]) AS u(id, target) WHERE t.id = u.id "
                    "RETURNING t.*",
                    [r["row_id"] for r in rows],
                    [r["target_id"] for r in rows],
                    self.now,
                )
                for row in updated:
                    self.result.changes.append(
                        ChangeEvent.of(
                            entity, row, "upsert", self._resolution_version(row), [column]
                        )
                    )
                self.result.resolved += len(updated)

    def _resolution_version(self, row: asyncpg.Record) -> Version:
        """The version of a change that only resolved a parked reference: the row's own
        version, then when it was resolved, so it sorts after the change that stored the
        row without the reference. Consumers that skip versions they have (deliver) would
        otherwise drop it, and the CRM would never learn the order's company."""
        return Version(row["version_at"], f"{row['version_event_id'] or ''}~{self.now.isoformat()}")

    # --- deletes ----------------------------------------------------------------------

    async def _tombstone(
        self, entity: str, table: sa.Table, items: list[tuple[_Pending, asyncpg.Record | None]]
    ) -> None:
        rows: list[dict[str, Any]] = [
            {
                "source_id": item.record.source_id,
                "source_table": item.row.source_table,
                "source_key": item.row.source_key,
                "version_at": item.record.version.at,
                "version_event_id": item.record.version.event_id,
                "deleted_at": self.now,
                "extra": {},
                "updated_at": self.now,
            }
            for item, _ in items
        ]
        # A delete for a row never seen still leaves a tombstone, so an older upsert that
        # arrives later cannot bring it to life.
        new = [row for row, (_, stored) in zip(rows, items, strict=True) if stored is None]
        old = [
            (row, stored)
            for row, (_, stored) in zip(rows, items, strict=True)
            if stored is not None
        ]
        inserted = await self._insert_rows(table, new)
        # A tombstone is a row too: children parked waiting for it resolve to it, as they
        # would had they arrived after it (and are then dropped with it, below).
        self.arrived[entity].update((row["source_id"], row["source_key"]) for row in inserted)
        written = await self._update_rows(
            table,
            [
                (
                    {
                        k: row[k]
                        for k in ("version_at", "version_event_id", "deleted_at", "updated_at")
                    },
                    stored,
                )
                for row, stored in old
            ],
        )
        written_by_key = {(row["source_id"], row["source_key"]): row for row in written}
        for item, stored in items:
            if stored is None:
                continue
            row = written_by_key[(item.record.source_id, item.row.source_key)]
            self._remember(entity, row["source_id"], row["source_key"], row["id"])
            if stored["deleted_at"] is None:
                self.result.changes.append(
                    ChangeEvent.of(entity, row, "delete", item.record.version, ["deleted_at"])
                )
        # A deleted row waits for nothing.
        await self.connection.execute(
            "DELETE FROM parked_references WHERE entity = $1 AND row_id = ANY($2::int4[])",
            entity,
            [row["id"] for row in written],
        )
        # Deleting a parent deletes its children (none kept): a set replaced by an empty
        # one, for every child table.
        for child_entity, column in CHILDREN.get(entity, ()):
            await self._record_child_sets(child_entity, [*written, *inserted])
            await self._tombstone_children(
                child_entity, column, [(dict(row), set()) for row in written]
            )
            self.new_parent_sets += [(child_entity, column, dict(row), set()) for row in inserted]

    async def _replace_children(
        self,
        items: list[tuple[_Pending, asyncpg.Record | None]],
        by_key: Mapping[RowKey, Mapping[str, Any]],
    ) -> None:
        """Tombstone the children the new parent versions no longer carry: one statement
        per child table for the whole batch."""
        groups: dict[tuple[str, str], list[tuple[Mapping[str, Any], set[str]]]] = defaultdict(list)
        versions: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for item, stored in items:
            parent = by_key[(item.record.source_id, item.row.source_key)]
            for child_set in item.row.child_sets:
                versions[child_set.entity].append(parent)
                if stored is None:
                    # Inserted just now: no row can point at an id that did not exist; a
                    # child waiting for it is parked with NULL until the end of the batch.
                    self.new_parent_sets.append(
                        (child_set.entity, child_set.parent_column, parent, child_set.keys)
                    )
                    continue
                groups[(child_set.entity, child_set.parent_column)].append((parent, child_set.keys))
        for entity, versioned in versions.items():
            await self._record_child_sets(entity, versioned)
        for (entity, column), parents in groups.items():
            await self._tombstone_children(entity, column, parents)

    async def _replace_children_of_new_parents(self) -> None:
        """The sets of parents created in this batch, for the children that were parked
        waiting for them and now point at them (only those: the batch's own nested
        children are the set). Without this, a lone child that arrived before its parent
        would outlive a set that excludes it, and one that arrived after would not."""
        groups: dict[tuple[str, str], list[tuple[Mapping[str, Any], set[str]]]] = defaultdict(list)
        for entity, column, parent, keys in self.new_parent_sets:
            if (entity, column, parent["id"]) in self.resolved_children:
                groups[(entity, column)].append((parent, keys))
        for (entity, column), parents in groups.items():
            await self._tombstone_children(entity, column, parents)

    async def _record_child_sets(
        self, child_entity: str, parents: Sequence[Mapping[str, Any] | asyncpg.Record]
    ) -> None:
        """Remember the parents' versions as the versions of their sets of
        ``child_entity``: one statement, keeping the newest."""
        newest: dict[int, Version] = {}
        for parent in parents:
            version = Version(parent["version_at"], parent["version_event_id"])
            current = newest.get(parent["id"])
            if version.newer_than(current):
                newest[parent["id"]] = version
        if not newest:
            return
        await self.connection.execute(
            "INSERT INTO child_set_versions (child_entity, parent_id, version_at, "
            "version_event_id) SELECT $1::text, * FROM unnest($2::int4[], $3::timestamptz[], "
            "$4::text[]) ON CONFLICT (child_entity, parent_id) DO UPDATE SET "
            "version_at = excluded.version_at, version_event_id = excluded.version_event_id "
            "WHERE (COALESCE(child_set_versions.version_at, '-infinity'), "
            "child_set_versions.version_event_id) < "
            "(COALESCE(excluded.version_at, '-infinity'), excluded.version_event_id)",
            child_entity,
            list(newest),
            [version.at for version in newest.values()],
            [version.event_id for version in newest.values()],
        )

    async def _tombstone_children(
        self, entity: str, column: str, parents: Sequence[tuple[Mapping[str, Any], set[str]]]
    ) -> None:
        """Tombstone the children of ``parents`` whose keys are not kept, with the parent's
        version, so an older version of a child sent on its own cannot bring it back."""
        if not parents:
            return
        table = table_of(entity)
        kept = [(parent["id"], key) for parent, keys in parents for key in keys]
        rows = await self.connection.fetch(
            f"UPDATE {table.name} AS t SET deleted_at = $6, updated_at = $6, "  # noqa: S608
            "version_at = p.version_at, version_event_id = p.version_event_id "
            "FROM unnest($1::int4[], $2::timestamptz[], $3::text[]) "
            "AS p(id, version_at, version_event_id) "
            f"WHERE t.{column} = p.id AND t.deleted_at IS NULL "
            # A child written by a newer event of its own is not the older parent's to drop.
            "AND (COALESCE(t.version_at, '-infinity'), COALESCE(t.version_event_id, '')) "
            "< (COALESCE(p.version_at, 'infinity'), COALESCE(p.version_event_id, '')) "
            "AND NOT EXISTS ("
            "SELECT 1 FROM unnest($4::int4[], $5::text[]) AS k(parent_id, key) "
            f"WHERE k.parent_id = t.{column} AND k.key = t.source_key) RETURNING t.*",
            [parent["id"] for parent, _ in parents],
            [parent["version_at"] for parent, _ in parents],
            [parent["version_event_id"] for parent, _ in parents],
            [parent_id for parent_id, _ in kept],
            [key for _, key in kept],
            self.now,
        )
        await self._forget_tombstoned(entity, rows)

    async def _forget_tombstoned(self, entity: str, rows: list[asyncpg.Record]) -> None:
        """Change events for rows just tombstoned; a deleted row waits for nothing."""
        await self.connection.execute(
            "DELETE FROM parked_references WHERE entity = $1 AND row_id = ANY($2::int4[])",
            entity,
            [row["id"] for row in rows],
        )
        for row in rows:
            self.result.changes.append(
                ChangeEvent.of(entity, row, "delete", _version_of(row), ["deleted_at"])
            )


def _version_of(row: asyncpg.Record | None) -> Version | None:
    if row is None or row["version_event_id"] is None:
        return None
    return Version(row["version_at"], row["version_event_id"])


_NOT_CONTENT = frozenset(
    {
        "id",
        "source_id",
        "source_table",
        "source_key",
        "version_at",
        "version_event_id",
        "updated_at",
    }
)


def _changed_columns(
    row: Mapping[str, Any] | asyncpg.Record, stored: Mapping[str, Any] | asyncpg.Record | None
) -> list[str]:
    """Columns whose value differs from what was stored (the filled ones, for a new row)."""
    if stored is None:
        return sorted(
            k for k in row.keys() if k not in _NOT_CONTENT and row[k] is not None and row[k] != {}
        )
    return sorted(k for k in row.keys() if k not in _NOT_CONTENT and row[k] != stored[k])
