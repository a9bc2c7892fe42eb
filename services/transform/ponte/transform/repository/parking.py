"""Parked references: a reference whose target has not arrived leaves its column NULL and
a row in ``parked_references``; when the target arrives (in this batch, or found by the
sweep) the waiting rows are pointed at it, so that either arrival order ends the same."""

from __future__ import annotations

from collections import defaultdict

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
        "target_entity, target_key, event_id, parked_at) "
        "SELECT source_id, $1::text, row_id, column_name, field, target_entity, "
        "target_key, event_id, $2::timestamptz FROM unnest($3::text[], $4::int4[], "
        "$5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) AS p(source_id, "
        "row_id, column_name, field, target_entity, target_key, event_id)",
        entity,
        batch.now,
        [item.record.source_id for _, item, _ in parks],
        [row_id for row_id, _, _ in parks],
        [ref.column for _, _, ref in parks],
        [ref.field for _, _, ref in parks],
        [ref.target_entity for _, _, ref in parks],
        [ref.target_key for _, _, ref in parks],
        [item.record.event_id for _, item, _ in parks],
    )
    batch.result.parked += len(parks)


async def resolve_parked(batch: BatchState, *, sweep: bool = False) -> None:
    """Point waiting rows at targets that arrived in this batch (or, with ``sweep``,
    at any target that exists now: catches a target committed by another replica
    while this one was parking a reference to it)."""
    entities = list(crm_model().entities) if sweep else list(batch.arrived)
    for target_entity in entities:
        waiting = await _release(batch, target_entity, sweep=sweep)
        groups: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
        for row in waiting:
            groups[(row["entity"], row["column_name"])].append(row)
            batch.resolved_children.add((row["entity"], row["column_name"], row["target_id"]))
        for (entity, column), rows in groups.items():
            await _point_at_targets(batch, entity, column, rows)


async def _release(batch: BatchState, target_entity: str, *, sweep: bool) -> list[asyncpg.Record]:
    """The parked references to ``target_entity`` whose target now exists, deleted, with
    the target's id."""
    target = table_of(target_entity)
    keys = batch.arrived.get(target_entity, set())
    return await batch.connection.fetch(
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
    # Same time and sequence; the event id extended, so it sorts right after the row's.
    return Version(
        row["version_at"],
        row["version_seq"],
        f"{row['version_event_id'] or ''}~{batch.now.isoformat()}",
    )
