"""References to other delivered records: a parent's id *in this CRM*, never Ponte's.

A reference column (``company_id`` of an order) holds Ponte's own row id of the company.
Sent as it is, a CRM would link the order to whichever of its records has that number: a
silent wrong write. So a target names, per object, where the referenced record's CRM id
goes (``references: {company_id: account}``), and this module puts that id there, taken
from ``deliveries`` (same target, the referenced entity, ``row_id`` = the column's value).
A plain ``properties`` mapping of a reference column is refused when targets are loaded
(``ponte.deliver.targets``).

When the referenced record has no CRM id yet (it has not been delivered to this target,
or it failed), the change **waits**, visibly: a row in ``waiting_deliveries`` (the change
as read, what it waits for, since when) and ``deliveries.state = 'waiting'`` with the
reason, so ``GET /deliveries`` and the ops page show it. After every delivery step of the
target, ``release`` claims the waiting changes whose record now has a CRM id, and the
engine produces them back onto the changes topic under their record's key: the consumer
owning that partition delivers them, after any newer version of the same record (which
makes the older one a skip). One record's changes so stay with one consumer, in order.

Why no waiting change is lost between two consumers: a consumer records the deliveries
of a step (committed), parks the changes that could not resolve (committed), then
releases. If the order's consumer looked the company up before the company's consumer
recorded it, it parks the order and then releases; either its own release (run after its
park) or the company consumer's (run after its deliveries were recorded) sees both rows.
A claim (``claimed_at``) keeps two consumers from handing one change back twice; a claim
left by a process that died between producing and forgetting is retaken after
``CLAIM_STALE_S`` by the next step of that target, and the second copy is a skip.

Limits: releases run when the target has a batch to deliver, so on a system with no other
traffic a stale claim waits for the next change; a change whose parent never arrives
waits until it does (no expiry yet).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ponte.deliver.changes import Change, change_from, event_body
from ponte.deliver.targets import Reference, Target
from ponte.shared.crm_model import crm_model
from ponte.shared.versions import version_order

CLAIM_STALE_S = 120
"""A claimed waiting change not settled within this long was lost with its process."""
RELEASE_LIMIT = 1000
"""Waiting changes taken in one release (the rest on the next round or batch)."""


@dataclass(frozen=True)
class Missing:
    """A referenced record without a CRM id in this target (yet)."""

    column: str
    entity: str
    row_id: int

    def reason(self, target_id: str) -> str:
        return (
            f"waiting for {self.entity} row {self.row_id} (its {self.column}) to be delivered "
            f"to {target_id}: its id in the CRM is what this record must carry"
        )


class UnusableReference(ValueError):
    """The referenced record's CRM id cannot be sent as the type the target asks for."""


def _referenced(target: Target, change: Change) -> list[tuple[str, str, int]]:
    """(column, referenced entity, row id) of each non-null reference the target sends."""
    declared = target.objects[change.entity].references
    if not declared or change.operation != "upsert":
        return []
    entities = crm_model().references_of(change.entity)
    found = []
    for column in declared:
        value = change.row.get(column)
        if value is not None:
            found.append((column, entities[column], int(value)))
    return found


def _typed(crm_id: str, reference: Reference, what: str) -> str | int:
    if reference.type == "string":
        return crm_id
    if crm_id.isdigit():
        return int(crm_id)
    raise UnusableReference(f"{what}: its CRM id {crm_id!r} is not an integer")


@dataclass
class Resolved:
    properties: dict[str, dict[str, Any]]
    """external id -> the reference properties to add to the record's own."""
    missing: list[tuple[Change, Missing]]
    unusable: list[tuple[Change, str]]


async def resolve(pool: asyncpg.Pool, target: Target, changes: Iterable[Change]) -> Resolved:
    """Each change's reference properties, or what it still waits for."""
    wanted = {change.external_id: (change, _referenced(target, change)) for change in changes}
    keys = {(entity, row_id) for _, refs in wanted.values() for _, entity, row_id in refs}
    crm_ids: dict[tuple[str, int], str] = {}
    if keys:
        entities, row_ids = zip(*keys, strict=True)
        rows = await pool.fetch(
            "SELECT entity, row_id, crm_id FROM deliveries WHERE target_id = $1 "
            "AND crm_id IS NOT NULL AND (entity, row_id) IN "
            "(SELECT * FROM unnest($2::text[], $3::int[]))",
            target.id,
            list(entities),
            list(row_ids),
        )
        crm_ids = {(row["entity"], row["row_id"]): row["crm_id"] for row in rows}
    result = Resolved({}, [], [])
    for external_id, (change, refs) in wanted.items():
        declared = target.objects[change.entity].references
        properties: dict[str, Any] = {
            reference.to: None
            for column, reference in declared.items()
            if change.operation == "upsert" and change.row.get(column) is None
        }
        try:
            for column, entity, row_id in refs:
                crm_id = crm_ids.get((entity, row_id))
                if crm_id is None:
                    result.missing.append((change, Missing(column, entity, row_id)))
                    break
                what = f"{column} refers to {entity} row {row_id}"
                properties[declared[column].to] = _typed(crm_id, declared[column], what)
            else:
                result.properties[external_id] = properties
        except UnusableReference as error:
            result.unusable.append((change, str(error)))
    return result


def _encode(change: Change) -> dict[str, Any]:
    return {
        "event": event_body(change),
        "topic": change.topic,
        "partition": change.partition,
        "offset": change.offset,
        "published_at": change.published_at,
    }


def _decode(data: dict[str, Any]) -> Change:
    return change_from(
        data["event"],
        topic=data["topic"],
        partition=int(data["partition"]),
        offset=int(data["offset"]),
        published_at=data["published_at"],
    )


def _version(change: Change) -> tuple[datetime | None, int | None, str]:
    return change.version_at, change.version_seq, change.version_event_id or ""


def _versions(changes: list[Change]) -> tuple[list[Any], ...]:
    """Each record and version as the column arrays ``unnest`` takes."""
    return (
        [c.entity for c in changes],
        [c.source_id for c in changes],
        [c.source_key for c in changes],
        [c.version_at for c in changes],
        [c.version_seq for c in changes],
        [c.version_event_id or "" for c in changes],
    )


async def park(pool: asyncpg.Pool, target: Target, missing: list[tuple[Change, Missing]]) -> None:
    """Keep the changes that wait, each replacing an older waiting one of its record."""
    if not missing:
        return
    now = datetime.now(UTC)
    await pool.executemany(
        "INSERT INTO waiting_deliveries AS w (target_id, entity, source_id, source_key, "  # noqa: S608 - the order is a constant
        "version_at, version_seq, version_event_id, change, waits_for_entity, "
        "waits_for_row_id, reason, since, claimed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, "
        "$8, $9, $10, $11, $12, NULL) "
        "ON CONFLICT (target_id, entity, source_id, source_key) DO UPDATE SET "
        "version_at = EXCLUDED.version_at, version_seq = EXCLUDED.version_seq, "
        "version_event_id = EXCLUDED.version_event_id, "
        "change = EXCLUDED.change, waits_for_entity = EXCLUDED.waits_for_entity, "
        "waits_for_row_id = EXCLUDED.waits_for_row_id, reason = EXCLUDED.reason, "
        "claimed_at = NULL "
        f"WHERE {version_order('EXCLUDED')} >= {version_order('w')}",
        [
            (
                target.id,
                change.entity,
                change.source_id,
                change.source_key,
                *_version(change),
                _encode(change),
                why.entity,
                why.row_id,
                why.reason(target.id),
                now,
            )
            for change, why in missing
        ],
    )


async def newer_waiting(
    pool: asyncpg.Pool, target: Target, changes: list[Change]
) -> set[tuple[str, str, str]]:
    """Records of ``changes`` for which a newer change already waits: the older one must
    not reach the CRM before it (or ever: it is superseded)."""
    if not changes:
        return set()
    rows = await pool.fetch(
        "SELECT c.entity, c.source_id, c.source_key FROM unnest($2::text[], $3::text[], "  # noqa: S608 - the order is a constant
        "$4::text[], $5::timestamptz[], $6::int8[], $7::text[]) AS c(entity, source_id, "
        "source_key, version_at, version_seq, version_event_id) "
        "JOIN waiting_deliveries w ON w.target_id = $1 "
        "AND w.entity = c.entity AND w.source_id = c.source_id AND w.source_key = c.source_key "
        f"WHERE {version_order('w')} > {version_order('c')}",
        target.id,
        *_versions(changes),
    )
    return {(row["entity"], row["source_id"], row["source_key"]) for row in rows}


async def settle(
    pool: asyncpg.Pool, target: Target, changes: list[Change], *, released: bool = False
) -> None:
    """Drop the waiting changes these ones settle: the same record, at the same or an
    older version, once they were delivered, dead-lettered or skipped. ``released``: the
    changes were just handed back, so only rows still claimed go (a row the owner parked
    again meanwhile has its claim cleared: it is a new wait and stays)."""
    if not changes:
        return
    await pool.execute(
        "DELETE FROM waiting_deliveries w USING unnest($2::text[], $3::text[], $4::text[], "  # noqa: S608 - the order is a constant
        "$5::timestamptz[], $6::int8[], $7::text[]) AS c(entity, source_id, source_key, "
        "version_at, version_seq, version_event_id) WHERE w.target_id = $1 "
        "AND w.entity = c.entity AND w.source_id = c.source_id AND w.source_key = c.source_key "
        "AND (NOT $8 OR w.claimed_at IS NOT NULL) "
        f"AND {version_order('w')} <= {version_order('c')}",
        target.id,
        *_versions(changes),
        released,
    )


async def release(pool: asyncpg.Pool, target: Target) -> list[Change]:
    """Claim the waiting changes whose referenced record now has a CRM id here (the
    engine hands them back to their partition, then ``settle(..., released=True)``)."""
    rows = await pool.fetch(
        "UPDATE waiting_deliveries w SET claimed_at = now() WHERE (w.target_id, w.entity, "
        "w.source_id, w.source_key) IN (SELECT x.target_id, x.entity, x.source_id, "
        "x.source_key FROM waiting_deliveries x JOIN deliveries d ON d.target_id = "
        "x.target_id AND d.entity = x.waits_for_entity AND d.row_id = x.waits_for_row_id "
        "WHERE x.target_id = $1 AND d.crm_id IS NOT NULL AND (x.claimed_at IS NULL OR "
        "x.claimed_at < now() - make_interval(secs => $2)) "
        "LIMIT $3 FOR UPDATE OF x SKIP LOCKED) RETURNING w.change",
        target.id,
        float(CLAIM_STALE_S),
        RELEASE_LIMIT,
    )
    return [_decode(row["change"]) for row in rows]
