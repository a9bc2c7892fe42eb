"""References resolved by key: a referenced row's id comes from this batch, from the
database, or from a placeholder created now (``stub``: codes, brands, products); what is
still missing is left for ``parking``."""

from __future__ import annotations

from collections import defaultdict

import asyncpg
import sqlalchemy as sa

from ponte.transform.normalize import Reference
from ponte.transform.repository.changes import ChangeEvent, changed_columns
from ponte.transform.repository.state import BatchState
from ponte.transform.repository.statements import insert_rows
from ponte.transform.repository.tables import RowIdentity, RowKey, table_of


async def resolve_references(
    batch: BatchState,
    references: list[tuple[str, Reference]],
    being_written: set[RowIdentity],
) -> dict[RowIdentity, int]:
    """Ids of referenced rows, by ``Reference.target``: from this batch, from the
    database, or a new stub; by another field, from the database only, and only when
    exactly one live row has the value (``batch.waiting_because`` says why not)."""
    found: dict[RowIdentity, int] = {}
    wanted: dict[str, dict[RowKey, Reference]] = defaultdict(dict)
    by_field: dict[tuple[str, str], set[RowKey]] = defaultdict(set)
    for source_id, ref in references:
        target = ref.target(source_id)
        if ref.by is not None:
            by_field[(ref.target_entity, ref.by)].add((target[1], ref.target_key))
        elif target in batch.ids:
            found[target] = batch.ids[target]
        else:
            wanted[ref.target_entity][(target[1], ref.target_key)] = ref
    for entity, refs in wanted.items():
        await _look_up(batch, entity, refs, being_written, found)
    for (target_entity, source_id, target_key), row_id in found.items():
        batch.remember(target_entity, source_id, target_key, row_id)
    for (entity, column), values in by_field.items():
        await _look_up_by(batch, entity, column, values, found)
    return found


async def _look_up_by(
    batch: BatchState,
    entity: str,
    column: str,
    values: set[RowKey],
    found: dict[RowIdentity, int],
) -> None:
    """Rows of ``entity`` whose ``column`` has these values, per source. One match is the
    target; several are never guessed between (the reference waits, saying which rows)."""
    table = table_of(entity)
    assert column in table.c, f"{column} is not a column of {entity}"  # checked at load
    rows = await batch.connection.fetch(
        f"SELECT id, source_id, {column}::text AS value FROM {table.name} "  # noqa: S608
        f"WHERE deleted_at IS NULL AND (source_id, {column}::text) IN "
        "(SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY id",
        [source for source, _ in values],
        [value for _, value in values],
    )
    matches: dict[RowKey, list[int]] = defaultdict(list)
    for row in rows:
        matches[(row["source_id"], row["value"])].append(row["id"])
    for (source, value), ids in matches.items():
        target = (entity, source, f"{column}={value}")
        if len(ids) == 1:
            found[target] = ids[0]
        else:
            batch.waiting_because[target] = (
                f"{len(ids)} {entity} rows of source {source!r} have {column} {value!r} "
                f"(ids {', '.join(map(str, ids[:5]))}): Ponte does not guess between them"
            )


async def _look_up(
    batch: BatchState,
    entity: str,
    refs: dict[RowKey, Reference],
    being_written: set[RowIdentity],
    found: dict[RowIdentity, int],
) -> None:
    """Add to ``found`` the stored rows of ``entity`` these references name, and the stubs
    created for those missing (unless this very statement writes them)."""
    table = table_of(entity)
    rows = await batch.connection.fetch(
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
    for row in await insert_stubs(batch, entity, table, stubs):
        found[(entity, row["source_id"], row["source_key"])] = row["id"]
        batch.arrived[entity].add((row["source_id"], row["source_key"]))


async def insert_stubs(
    batch: BatchState, entity: str, table: sa.Table, stubs: list[tuple[RowKey, Reference]]
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
            "updated_at": batch.now,
            **ref.stub_values,
        }
        for (source_id, key), ref in stubs
    ]
    inserted = await insert_rows(
        batch.connection, table, rows, conflict="ON CONFLICT (source_id, source_key) DO NOTHING"
    )
    for row in inserted:
        batch.result.changes.append(
            ChangeEvent.of(entity, row, "upsert", None, changed_columns(row, None))
        )
    return list(inserted)
