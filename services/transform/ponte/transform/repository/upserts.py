"""Entity rows written with their versions: each row's values (its references resolved,
its version and source), one INSERT for the new rows and one UPDATE per column set for the
stored ones, a change event for every row whose content changed, then what the rows wait
for (``parking``) and the children they no longer carry (``child_sets``)."""

from __future__ import annotations

from typing import Any

import asyncpg
import sqlalchemy as sa

from ponte.shared.crm_model import CODE_ENTITY, crm_model
from ponte.shared.versions import Version
from ponte.transform.normalize import Reference
from ponte.transform.repository.changes import ChangeEvent, changed_columns
from ponte.transform.repository.child_sets import replace_children
from ponte.transform.repository.grouping import Pending
from ponte.transform.repository.parking import park
from ponte.transform.repository.references import resolve_references
from ponte.transform.repository.state import BatchState
from ponte.transform.repository.statements import insert_rows, update_rows
from ponte.transform.repository.tables import RowIdentity, RowKey, version_of

_KEY_COLUMNS = "id, source_id, source_key"
_T_KEY_COLUMNS = "t.id, t.source_id, t.source_key"

Stored = tuple[Pending, asyncpg.Record | None]
"""A row to write and the row stored under its key (None: a new row)."""


async def upsert(batch: BatchState, entity: str, table: sa.Table, items: list[Stored]) -> None:
    """Write ``items`` (rows of ``entity`` newer than what is stored) in one round trip
    per kind of statement."""
    resolved = await _resolve(batch, entity, items)
    descriptions = await _descriptions(batch, items, resolved)
    inserts: list[dict[str, Any]] = []
    updates: list[tuple[dict[str, Any], asyncpg.Record]] = []
    parks: list[tuple[Pending, Reference]] = []
    for item, stored in items:
        values = _row_values(batch, item, resolved, descriptions, parks)
        if stored is None:
            inserts.append(values)
        else:
            updates.append((values, stored))
    by_key = await _write(batch, entity, table, inserts, updates)
    _record_written(batch, entity, items, by_key)
    await park(
        batch,
        entity,
        [(by_key[i.key]["id"], i, ref) for i, ref in parks],
        # Only a stored row can have parked references of an older version: a row
        # inserted just now has a fresh id nothing was parked under.
        [by_key[i.key]["id"] for i, s in items if s],
    )
    await replace_children(batch, items, by_key)


async def _resolve(batch: BatchState, entity: str, items: list[Stored]) -> dict[RowIdentity, int]:
    """The ids the rows' references point at. A reference to a row this very statement
    writes (a code's parent code, a spouse) cannot be resolved before it; it is parked
    and resolved at batch end."""
    being_written = {(entity, item.record.source_id, item.row.source_key) for item, _ in items}
    return await resolve_references(
        batch,
        [(item.record.source_id, ref) for item, _ in items for ref in item.row.references],
        being_written,
    )


async def _descriptions(
    batch: BatchState, items: list[Stored], resolved: dict[RowIdentity, int]
) -> dict[int, str | None]:
    """The descriptions of the codes written as text (``on_code: description``)."""
    ids = {
        resolved[target]
        for item, _ in items
        for ref in item.row.references
        if ref.writes == "description" and (target := ref.target(item.record.source_id)) in resolved
    }
    if not ids:
        return {}
    rows = await batch.connection.fetch(
        f"SELECT id, description FROM {crm_model().table_name(CODE_ENTITY)} "  # noqa: S608
        "WHERE id = ANY($1::int4[])",
        list(ids),
    )
    return {row["id"]: row["description"] for row in rows}


def _row_values(
    batch: BatchState,
    item: Pending,
    resolved: dict[RowIdentity, int],
    descriptions: dict[int, str | None],
    parks: list[tuple[Pending, Reference]],
) -> dict[str, Any]:
    """The whole row as this version writes it; an unresolved reference is NULL and
    added to ``parks``. A code written as text takes its description as known now (a
    placeholder code has none yet: its key)."""
    values = dict(item.row.values)
    for ref in item.row.references:
        target = resolved.get(ref.target(item.record.source_id))
        if ref.writes == "description":
            values[ref.column] = descriptions.get(target or -1) or ref.fallback
            continue
        values[ref.column] = target
        if target is None:
            parks.append((item, ref))
    values.update(
        source_id=item.record.source_id,
        source_table=item.row.source_table,
        source_key=item.row.source_key,
        version_at=item.record.version.at,
        version_seq=item.record.version.seq,
        version_event_id=item.record.version.event_id,
        mapping_digest=item.record.mapping_digest,
        deleted_at=None,
        extra=item.row.extra,
        updated_at=batch.now,
    )
    return values


async def _write(
    batch: BatchState,
    entity: str,
    table: sa.Table,
    inserts: list[dict[str, Any]],
    updates: list[tuple[dict[str, Any], asyncpg.Record]],
) -> dict[RowKey, dict[str, Any]]:
    """Insert the new rows and update the stored ones; every row as written now, by
    key, with its id."""
    # Only ids come back: the rows are what was just written (over the stored row for
    # an update), which spares decoding every column PostgreSQL would echo.
    ids = {
        (r["source_id"], r["source_key"]): r["id"]
        for r in await insert_rows(batch.connection, table, inserts, returning=_KEY_COLUMNS)
    }
    # Derived columns (an ABC class) are not the transform's: they come back as the
    # row holds them now, so a change event never carries a value the classification
    # job replaced meanwhile.
    derived = sorted(crm_model().entity(entity).derived)
    returning = ", ".join([_T_KEY_COLUMNS, *(f"t.{column}" for column in derived)])
    updated = await update_rows(batch.connection, table, updates, returning=returning)
    ids.update({(r["source_id"], r["source_key"]): r["id"] for r in updated})
    now_derived = {(r["source_id"], r["source_key"]): r for r in updated}
    by_key: dict[RowKey, dict[str, Any]] = {}
    for values in inserts:
        by_key[(values["source_id"], values["source_key"])] = values
    for values, stored in updates:
        key = (values["source_id"], values["source_key"])
        by_key[key] = {**dict(stored), **values}
        by_key[key].update({column: now_derived[key][column] for column in derived})
    for key, row in by_key.items():
        row["id"] = ids[key]
    return by_key


def _record_written(
    batch: BatchState, entity: str, items: list[Stored], by_key: dict[RowKey, dict[str, Any]]
) -> None:
    """Remember the written rows' ids, note the new ones as arrived, and a change event
    for each row whose content changed."""
    for item, stored in items:
        key = item.key
        row = by_key[key]
        batch.remember(entity, row["source_id"], row["source_key"], row["id"])
        if stored is None:
            batch.arrived[entity].add(key)
        changed = changed_columns(row, stored)
        if changed:
            batch.result.changes.append(
                ChangeEvent.of(entity, row, "upsert", _change_version(batch, item, stored), changed)
            )


def _change_version(batch: BatchState, item: Pending, stored: asyncpg.Record | None) -> Version:
    """The version a change event carries: the record's own, except when a reprocess
    rewrote the row at the version already stored (another mapping). Deliver skips a
    version a target already has, so that correction would never reach the CRM: it goes
    as the same version corrected now, sorting right after it (as a resolved parked
    reference does, ``Version.changed_at``)."""
    version = item.record.version
    if stored is None or version_of(stored) != version:
        return version
    return version.changed_at(batch.now)
