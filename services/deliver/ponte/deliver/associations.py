"""Links between delivered records (a deal to its company, a line item to its deal).

A target declares them per object: ``associations: {company_id: company}`` says the
entity's ``company_id`` foreign key points to a ``company`` row, so its CRM record is
linked to that company's CRM record. Both CRM ids come from ``deliveries`` (same target,
``row_id`` = the key's value).

Every declared link is a row of the ``associations`` table, whatever happens to it:
``waiting`` (one side has no CRM id yet: records of different partitions arrive in any
order, so the order can come before its company), ``associated`` (with the pair of CRM
ids it was made with) or ``failed`` (``status`` and ``last_error`` say why). A link is
(re)sent when either of its records is delivered and it is not already associated with
exactly these two CRM ids; so a waiting link completes when the referenced record arrives,
a failed one is tried again with the next version of either record, and an update that
changes neither id sends nothing. Sending a pair twice anyway (two consumers racing, a
crash before the row is marked) is harmless: a default association that exists is left
as it is by the CRM.

Failures stay in this table rather than going to the dead-letter topic: a dead letter is
a change event to replay, and replaying a version already delivered is skipped, so it
would never retry the link; a row here is visible (``state = 'failed'``) and is retried
by the next delivery of either record.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ponte.deliver.changes import Change
from ponte.deliver.targets import Target

WAITING, ASSOCIATED, FAILED = "waiting", "associated", "failed"


@dataclass(frozen=True)
class Link:
    """A link due to be sent: which row and key it is, and both CRM ids now."""

    from_entity: str
    from_row_id: int
    column: str
    to_entity: str
    to_row_id: int
    from_crm_id: str
    to_crm_id: str

    @property
    def pair(self) -> tuple[str, str]:
        return (self.from_crm_id, self.to_crm_id)


@dataclass
class LinkFailure:
    link: Link
    reason: str
    status: int | None
    attempts: int


def links_anything(target: Target) -> bool:
    return any(mapping.associations for mapping in target.objects.values())


async def note_references(pool: asyncpg.Pool, target: Target, delivered: list[Change]) -> None:
    """Record the links the delivered rows declare, before looking for due ones.

    A changed key starts its link over (waiting, no error); an unchanged key keeps its
    state, so an update of an order with the same company sends nothing. A key set to
    NULL, or a deleted row, drops its links (the CRM's existing link is not removed)."""
    now = datetime.now(UTC)
    keep: list[tuple[str, int, str, str, int]] = []
    drop: list[tuple[str, int, str]] = []
    for change in delivered:
        declared = target.objects[change.entity].associations
        for column, to_entity in declared.items():
            value = change.row.get(column) if change.operation == "upsert" else None
            if value is None:
                drop.append((change.entity, change.row_id, column))
            else:
                keep.append((change.entity, change.row_id, column, to_entity, int(value)))
    if drop:
        await pool.execute(
            "DELETE FROM associations WHERE target_id = $1 AND (from_entity, from_row_id, "
            "column_name) IN (SELECT * FROM unnest($2::text[], $3::int[], $4::text[]))",
            target.id,
            *(list(column) for column in zip(*drop, strict=True)),
        )
    if keep:
        await pool.execute(
            "INSERT INTO associations AS a (target_id, from_entity, from_row_id, column_name, "
            "to_entity, to_row_id, state, attempts, updated_at) "
            "SELECT $1, k.*, 'waiting', 0, $7 FROM unnest($2::text[], $3::int[], $4::text[], "
            "$5::text[], $6::int[]) AS k "
            "ON CONFLICT (target_id, from_entity, from_row_id, column_name) DO UPDATE SET "
            "state = CASE WHEN a.to_entity = EXCLUDED.to_entity "
            "AND a.to_row_id = EXCLUDED.to_row_id THEN a.state ELSE 'waiting' END, "
            "attempts = CASE WHEN a.to_entity = EXCLUDED.to_entity "
            "AND a.to_row_id = EXCLUDED.to_row_id THEN a.attempts ELSE 0 END, "
            "status = CASE WHEN a.to_entity = EXCLUDED.to_entity "
            "AND a.to_row_id = EXCLUDED.to_row_id THEN a.status END, "
            "last_error = CASE WHEN a.to_entity = EXCLUDED.to_entity "
            "AND a.to_row_id = EXCLUDED.to_row_id THEN a.last_error END, "
            "to_entity = EXCLUDED.to_entity, to_row_id = EXCLUDED.to_row_id, "
            "updated_at = EXCLUDED.updated_at",
            target.id,
            *(list(column) for column in zip(*keep, strict=True)),
            now,
        )


async def due_links(pool: asyncpg.Pool, target: Target, delivered: list[Change]) -> list[Link]:
    """Links touching a delivered row (either side) whose two records both have CRM ids
    and that are not already associated with exactly these ids.

    Why no link is missed between consumers: each one records its deliveries, then its
    links, then runs this query, each statement committed before the next. If the order's
    consumer queried before the company was recorded, the company's consumer queries
    after the order's link row was written, and finds it."""
    upserted = [change for change in delivered if change.operation == "upsert"]
    if not upserted:
        return []
    rows = await pool.fetch(
        "WITH touched AS (SELECT * FROM unnest($2::text[], $3::int[]) AS t(entity, row_id)) "
        "SELECT a.from_entity, a.from_row_id, a.column_name, a.to_entity, a.to_row_id, "
        "f.crm_id AS from_crm_id, t.crm_id AS to_crm_id FROM associations a "
        "JOIN deliveries f ON f.target_id = a.target_id AND f.entity = a.from_entity "
        "AND f.row_id = a.from_row_id "
        "JOIN deliveries t ON t.target_id = a.target_id AND t.entity = a.to_entity "
        "AND t.row_id = a.to_row_id "
        "WHERE a.target_id = $1 AND f.crm_id IS NOT NULL AND t.crm_id IS NOT NULL "
        "AND (a.state <> 'associated' OR a.from_crm_id IS DISTINCT FROM f.crm_id "
        "OR a.to_crm_id IS DISTINCT FROM t.crm_id) "
        "AND ((a.from_entity, a.from_row_id) IN (SELECT * FROM touched) "
        "OR (a.to_entity, a.to_row_id) IN (SELECT * FROM touched))",
        target.id,
        [change.entity for change in upserted],
        [change.row_id for change in upserted],
    )
    return [
        Link(
            r["from_entity"],
            r["from_row_id"],
            r["column_name"],
            r["to_entity"],
            r["to_row_id"],
            r["from_crm_id"],
            r["to_crm_id"],
        )
        for r in rows
    ]


def calls_for(target: Target, links: list[Link]) -> list[tuple[str, str, list[Link]]]:
    """(from object type, to object type, links) per API call, at most ``batch_size``
    links each (100 at most, HubSpot's batch size)."""
    grouped: dict[tuple[str, str], list[Link]] = defaultdict(list)
    for link in links:
        from_type = target.objects[link.from_entity].object_type
        to_type = target.objects[link.to_entity].object_type
        grouped[(from_type, to_type)].append(link)
    size = target.batch_size
    return [
        (from_type, to_type, items[i : i + size])
        for (from_type, to_type), items in grouped.items()
        for i in range(0, len(items), size)
    ]


async def record_outcomes(
    pool: asyncpg.Pool, target_id: str, linked: list[tuple[Link, int]], failed: list[LinkFailure]
) -> None:
    """Mark links associated (with their pair of ids) or failed (with the reason)."""
    now = datetime.now(UTC)
    rows = [
        (target_id, link.from_entity, link.from_row_id, link.column, link.from_crm_id,
         link.to_crm_id, ASSOCIATED, attempts, None, None, now)
        for link, attempts in linked
    ] + [
        (target_id, f.link.from_entity, f.link.from_row_id, f.link.column, f.link.from_crm_id,
         f.link.to_crm_id, FAILED, f.attempts, f.status, f.reason[:1000], now)
        for f in failed
    ]  # fmt: skip
    if rows:
        await pool.executemany(
            "UPDATE associations SET from_crm_id = $5, to_crm_id = $6, state = $7, "
            "attempts = attempts + $8, status = $9, last_error = $10, updated_at = $11 "
            "WHERE target_id = $1 AND from_entity = $2 AND from_row_id = $3 "
            "AND column_name = $4",
            rows,
        )
