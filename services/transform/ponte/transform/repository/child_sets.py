"""Children are a set: a child missing from the newest version of its parent is
tombstoned with the parent's version, and each parent remembers, per child table, the
version that last replaced its set (``child_set_versions``), so that a lone child older
than that set is stale even when there was no row to tombstone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from ponte.shared.crm_model import crm_model
from ponte.shared.versions import Version, version_order
from ponte.transform.repository.changes import ChangeEvent
from ponte.transform.repository.grouping import Pending
from ponte.transform.repository.parking import unpark_rows
from ponte.transform.repository.state import BatchState
from ponte.transform.repository.tables import (
    RowKey,
    content_columns,
    parent_of,
    table_of,
    version_of,
)

_ParentSets = list[tuple[Mapping[str, Any], set[str]]]
"""(parent row, kept child keys) per parent."""


async def drop_older_than_child_sets(
    batch: BatchState, entity: str, pending: list[Pending]
) -> None:
    """A child sent on its own (not nested in a parent version) that is older than the
    version that last replaced its parent's set of these children is stale: had it
    arrived first, that version would have tombstoned it. Nested children carry their
    parent's own version, so they are never older; only lone ones are looked up, in
    one statement."""
    link = parent_of(entity)
    assert link is not None, f"{entity} has no parent in the model"
    parent_entity, column = link
    lone: dict[RowKey, list[Pending]] = defaultdict(list)
    for item in pending:
        if item.row.depth != 0:
            continue
        for ref in item.row.references:
            if ref.column == column and ref.target_entity == parent_entity:
                lone[(item.record.source_id, ref.target_key)].append(item)
    if not lone:
        return
    parent = table_of(parent_entity)
    rows = await batch.connection.fetch(
        "SELECT p.source_id, p.source_key, c.version_at, c.version_seq, "  # noqa: S608
        "c.version_event_id "
        f"FROM child_set_versions c JOIN {parent.name} p ON p.id = c.parent_id "
        "WHERE c.child_entity = $1 AND (p.source_id, p.source_key) IN "
        "(SELECT * FROM unnest($2::text[], $3::text[]))",
        entity,
        [k[0] for k in lone],
        [k[1] for k in lone],
    )
    for row in rows:
        set_version = Version(row["version_at"], row["version_seq"], row["version_event_id"])
        for item in lone[(row["source_id"], row["source_key"])]:
            if set_version.newer_than(item.record.version):
                batch.stale.add(item.record.identity)


async def replace_children(
    batch: BatchState,
    items: list[tuple[Pending, asyncpg.Record | None]],
    by_key: Mapping[RowKey, Mapping[str, Any]],
) -> None:
    """Tombstone the children the new parent versions no longer carry: one statement
    per child table for the whole batch."""
    groups: dict[tuple[str, str], _ParentSets] = defaultdict(list)
    versions: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for item, stored in items:
        parent = by_key[item.key]
        for child_set in item.row.child_sets:
            versions[child_set.entity].append(parent)
            if stored is None:
                # Inserted just now: no row can point at an id that did not exist; a
                # child waiting for it is parked with NULL until the end of the batch.
                batch.new_parent_sets.append(
                    (child_set.entity, child_set.parent_column, parent, child_set.keys)
                )
                continue
            groups[(child_set.entity, child_set.parent_column)].append((parent, child_set.keys))
    for entity, versioned in versions.items():
        await record_child_sets(batch, entity, versioned)
    for (entity, column), parents in groups.items():
        await tombstone_children(batch, entity, column, parents)


async def replace_children_of_new_parents(batch: BatchState) -> None:
    """The sets of parents created in this batch, for the children that were parked
    waiting for them and now point at them (only those: the batch's own nested
    children are the set). Without this, a lone child that arrived before its parent
    would outlive a set that excludes it, and one that arrived after would not."""
    groups: dict[tuple[str, str], _ParentSets] = defaultdict(list)
    for entity, column, parent, keys in batch.new_parent_sets:
        if (entity, column, parent["id"]) in batch.resolved_children:
            groups[(entity, column)].append((parent, keys))
    for (entity, column), parents in groups.items():
        await tombstone_children(batch, entity, column, parents)


async def record_child_sets(
    batch: BatchState, child_entity: str, parents: Sequence[Mapping[str, Any] | asyncpg.Record]
) -> None:
    """Remember the parents' versions as the versions of their sets of
    ``child_entity``: one statement, keeping the newest."""
    newest: dict[int, Version] = {}
    for parent in parents:
        version = Version(parent["version_at"], parent["version_seq"], parent["version_event_id"])
        current = newest.get(parent["id"])
        if version.newer_than(current):
            newest[parent["id"]] = version
    if not newest:
        return
    await batch.connection.execute(
        "INSERT INTO child_set_versions (child_entity, parent_id, version_at, "  # noqa: S608
        "version_seq, version_event_id) SELECT $1::text, * FROM unnest($2::int4[], "
        "$3::timestamptz[], $4::int8[], $5::text[]) ON CONFLICT (child_entity, parent_id) "
        "DO UPDATE SET version_at = excluded.version_at, version_seq = excluded.version_seq, "
        "version_event_id = excluded.version_event_id "
        f"WHERE {version_order('child_set_versions')} < {version_order('excluded')}",
        child_entity,
        list(newest),
        [version.at for version in newest.values()],
        [version.seq for version in newest.values()],
        [version.event_id for version in newest.values()],
    )


async def tombstone_children(
    batch: BatchState,
    entity: str,
    column: str,
    parents: Sequence[tuple[Mapping[str, Any], set[str]]],
) -> None:
    """Tombstone the children of ``parents`` whose keys are not kept, with the parent's
    version, so an older version of a child sent on its own cannot bring it back."""
    if not parents:
        return
    table = table_of(entity)
    kept = [(parent["id"], key) for parent, keys in parents for key in keys]
    cleared = "".join(f", {name} = NULL" for name in content_columns(table, keep=column))
    # Live, a child written by the parent's own version is never dropped by it (that
    # version is stored already, so it is not re-applied). A reprocess re-applies that
    # very version under another mapping (a new skip rule): its children of the same
    # version that the set no longer carries go too (``ponte.shared.versions.applies``).
    older = "<=" if batch.reprocess else "<"
    rows = await batch.connection.fetch(
        # The tombstone is the parent's version alone: deleted when the parent's version
        # says (its time, not when this ran), its content cleared (the parent link kept),
        # so it is the same whichever versions of the child arrived before it.
        f"UPDATE {table.name} AS t SET deleted_at = COALESCE(p.version_at, $7), "  # noqa: S608
        f"updated_at = $7, extra = '{{}}'::jsonb{cleared}, version_at = p.version_at, "
        "version_seq = p.version_seq, version_event_id = p.version_event_id, "
        "mapping_digest = p.mapping_digest "
        "FROM unnest($1::int4[], $2::timestamptz[], $3::int8[], $4::text[], $8::text[]) "
        "AS p(id, version_at, version_seq, version_event_id, mapping_digest) "
        f"WHERE t.{column} = p.id AND t.deleted_at IS NULL "
        # A child written by a newer event of its own is not the older parent's to drop.
        f"AND {version_order('t')} {older} {version_order('p', at_missing='infinity')} "
        "AND NOT EXISTS ("
        "SELECT 1 FROM unnest($5::int4[], $6::text[]) AS k(parent_id, key) "
        f"WHERE k.parent_id = t.{column} AND k.key = t.source_key) RETURNING t.*",
        [parent["id"] for parent, _ in parents],
        [parent["version_at"] for parent, _ in parents],
        [parent["version_seq"] for parent, _ in parents],
        [parent["version_event_id"] for parent, _ in parents],
        [parent_id for parent_id, _ in kept],
        [key for _, key in kept],
        batch.now,
        [parent.get("mapping_digest") for parent, _ in parents],
    )
    await _forget_tombstoned(batch, entity, rows)
    # Their own children go with them, at any depth (an order's items' deliveries).
    for grandchild, grandchild_column in crm_model().children_of(entity):
        await record_child_sets(batch, grandchild, rows)
        await tombstone_children(
            batch, grandchild, grandchild_column, [(dict(row), set()) for row in rows]
        )


async def _forget_tombstoned(batch: BatchState, entity: str, rows: list[asyncpg.Record]) -> None:
    """Change events for rows just tombstoned; a deleted row waits for nothing."""
    await unpark_rows(batch.connection, entity, [row["id"] for row in rows])
    for row in rows:
        batch.result.changes.append(
            ChangeEvent.of(entity, row, "delete", version_of(row), ["deleted_at"])
        )
