"""Parked references: a reference whose target has not arrived leaves its column NULL and
a row in ``parked_references``; when the target arrives (in this batch, or found by the
sweep) the waiting rows are pointed at it, so that either arrival order ends the same."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg

from ponte.shared.crm_model import crm_model
from ponte.shared.db import DbConnection
from ponte.shared.versions import Version
from ponte.transform.normalize import Reference
from ponte.transform.repository.changes import ChangeEvent
from ponte.transform.repository.grouping import Pending
from ponte.transform.repository.state import BatchState
from ponte.transform.repository.tables import table_of


async def unpark_rows(connection: DbConnection, entity: str, row_ids: list[int]) -> None:
    """Forget what these rows were waiting for (a newer version, or a delete, replaces it)."""
    await connection.execute(
        "DELETE FROM parked_references WHERE entity = $1 AND row_id = ANY($2::int4[])",
        entity,
        row_ids,
    )


async def park(
    batch: BatchState,
    entity: str,
    parks: list[tuple[int, Pending, Reference]],
    applied_ids: list[int],
) -> None:
    """Forget what the previous versions of these rows were waiting for; record what
    the new versions wait for."""
    if applied_ids:
        await unpark_rows(batch.connection, entity, applied_ids)
    if not parks:
        return
    # One statement for all of them (a backlog parks thousands per batch).
    await batch.connection.execute(
        "INSERT INTO parked_references (source_id, entity, row_id, column_name, field, "
        "target_entity, target_key, event_id, parked_at, target_source, target_field, reason) "
        "SELECT source_id, $1::text, row_id, column_name, field, target_entity, "
        "target_key, event_id, $2::timestamptz, target_source, target_field, reason "
        "FROM unnest($3::text[], $4::int4[], $5::text[], $6::text[], $7::text[], $8::text[], "
        "$9::text[], $10::text[], $11::text[], $12::text[]) AS p(source_id, row_id, "
        "column_name, field, target_entity, target_key, event_id, target_source, "
        "target_field, reason)",
        entity,
        batch.now,
        [item.record.source_id for _, item, _ in parks],
        [row_id for row_id, _, _ in parks],
        [ref.column for _, _, ref in parks],
        [ref.field for _, _, ref in parks],
        [ref.target_entity for _, _, ref in parks],
        [ref.target_key for _, _, ref in parks],
        [item.record.event_id for _, item, _ in parks],
        [ref.target_source for _, _, ref in parks],
        [ref.by for _, _, ref in parks],
        [_why(batch, item.record.source_id, ref) for _, item, ref in parks],
    )
    batch.result.parked += len(parks)


async def expire_parked(connection: DbConnection, older_than: Any) -> list[dict[str, Any]]:
    """Parked references waiting since before ``older_than``, removed, each with the key
    of the row that waits (for the dead letter a person reads and acts on)."""
    expired = await connection.fetch(
        "DELETE FROM parked_references WHERE parked_at < $1 RETURNING *", older_than
    )
    by_entity: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in expired:
        by_entity[row["entity"]].append(row)
    found: list[dict[str, Any]] = []
    for entity, rows in by_entity.items():
        if entity not in crm_model():
            found += [{**dict(r), "source_key": None} for r in rows]  # a model lost it
            continue
        keys = {
            r["id"]: r["source_key"]
            for r in await connection.fetch(
                f"SELECT id, source_key FROM {table_of(entity).name} "  # noqa: S608
                "WHERE id = ANY($1::int4[])",
                [r["row_id"] for r in rows],
            )
        }
        found += [{**dict(r), "source_key": keys.get(r["row_id"])} for r in rows]
    return found


def _why(batch: BatchState, source_id: str, ref: Reference) -> str:
    """What a person reads next to a parked reference."""
    target = ref.target(source_id)
    if target in batch.waiting_because:
        return batch.waiting_because[target]
    if ref.by is not None:
        return (
            f"no live {ref.target_entity} of source {target[1]!r} has {ref.by} "
            f"{ref.target_key!r} yet"
        )
    return f"{ref.target_entity} {ref.target_key!r} of source {target[1]!r} has not arrived"


async def resolve_parked(batch: BatchState, *, sweep: bool = False) -> None:
    """Point waiting rows at targets that arrived in this batch (or, with ``sweep``,
    at any target that exists now: catches a target committed by another replica
    while this one was parking a reference to it)."""
    entities = list(crm_model().entities) if sweep else list(batch.arrived)
    if not entities:
        return
    # One look for the fields references wait by (rare), not one per entity and batch.
    by_fields: dict[str, list[str]] = defaultdict(list)
    for row in await batch.connection.fetch(
        "SELECT DISTINCT target_entity, target_field FROM parked_references "
        "WHERE target_field IS NOT NULL"
    ):
        by_fields[row["target_entity"]].append(row["target_field"])
    for target_entity in entities:
        waiting = await _release(batch, target_entity, by_fields[target_entity], sweep=sweep)
        groups: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
        for row in waiting:
            groups[(row["entity"], row["column_name"])].append(row)
            batch.resolved_children.add((row["entity"], row["column_name"], row["target_id"]))
        for (entity, column), rows in groups.items():
            await _point_at_targets(batch, entity, column, rows)


async def _release(
    batch: BatchState, target_entity: str, fields: list[str], *, sweep: bool
) -> list[asyncpg.Record]:
    """The parked references to ``target_entity`` whose target now exists, deleted, with
    the target's id: by key, and by each of ``fields`` references name it by."""
    target = table_of(target_entity)
    keys = batch.arrived.get(target_entity, set())
    released = list(
        await batch.connection.fetch(
            f"DELETE FROM parked_references p USING {target.name} t "  # noqa: S608
            "WHERE p.target_entity = $1 AND p.target_field IS NULL "
            "AND t.source_id = COALESCE(p.target_source, p.source_id) "
            "AND t.source_key = p.target_key AND ($4 OR (t.source_id, p.target_key) IN "
            "(SELECT * FROM unnest($2::text[], $3::text[]))) "
            "RETURNING p.entity, p.row_id, p.column_name, t.id AS target_id",
            target_entity,
            [k[0] for k in keys],
            [k[1] for k in keys],
            sweep,
        )
    )
    written = [i for (e, _, _), i in batch.ids.items() if e == target_entity] if fields else []
    for field in fields:
        if field in target.c:  # never a name the model does not have
            released += await _release_by(batch, target, target_entity, field, written, sweep)
    return released


async def _release_by(
    batch: BatchState,
    target: Any,
    target_entity: str,
    column: str,
    written: list[int],
    sweep: bool,
) -> list[asyncpg.Record]:
    """References by ``column`` whose value exactly one live row of the target's source
    has now (one this batch wrote, or, with ``sweep``, any)."""
    return list(
        await batch.connection.fetch(
            f"DELETE FROM parked_references p USING {target.name} t "  # noqa: S608
            "WHERE p.target_entity = $1 AND p.target_field = $2 "
            "AND t.source_id = COALESCE(p.target_source, p.source_id) "
            f"AND t.{column}::text = p.target_key AND t.deleted_at IS NULL "
            "AND ($4 OR t.id = ANY($3::int4[])) "
            f"AND (SELECT count(*) FROM {target.name} o WHERE o.source_id = t.source_id "
            f"AND o.{column}::text = p.target_key AND o.deleted_at IS NULL) = 1 "
            "RETURNING p.entity, p.row_id, p.column_name, t.id AS target_id",
            target_entity,
            column,
            written,
            sweep,
        )
    )


async def _point_at_targets(
    batch: BatchState, entity: str, column: str, rows: list[asyncpg.Record]
) -> None:
    """Set ``column`` of the waiting rows to their targets' ids, one change event each."""
    table = table_of(entity)
    updated = await batch.connection.fetch(
        f"UPDATE {table.name} AS t SET {column} = u.target, updated_at = $3 "  # noqa: S608
        "FROM unnest($1::int4[], $2::int4[]) AS u(id, target) WHERE t.id = u.id "
        "RETURNING t.*",
        [r["row_id"] for r in rows],
        [r["target_id"] for r in rows],
        batch.now,
    )
    for row in updated:
        batch.result.changes.append(
            ChangeEvent.of(entity, row, "upsert", resolution_version(row, batch), [column])
        )
    batch.result.resolved += len(updated)


def resolution_version(row: asyncpg.Record, batch: BatchState) -> Version:
    """The version of a change that only resolved a parked reference: the row's own
    version, then when it was resolved, so it sorts after the change that stored the
    row without the reference. Consumers that skip versions they have (deliver) would
    otherwise drop it, and the CRM would never learn the order's company."""
    stored = Version(row["version_at"], row["version_seq"], row["version_event_id"] or "")
    return stored.changed_at(batch.now)
