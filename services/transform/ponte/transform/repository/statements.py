"""One statement for many rows: a typed array per column, ``unnest`` into rows, so that a
batch costs one round trip per kind of statement and table rather than one per row."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg
import sqlalchemy as sa

from ponte.shared.db import DbConnection
from ponte.transform.repository.tables import RowKey, array_type


async def fetch_existing(
    connection: DbConnection, table: sa.Table, keys: list[RowKey]
) -> dict[RowKey, asyncpg.Record]:
    """The stored rows of these keys, locked for the rest of the transaction, in key
    order: two transactions writing the same rows (two replicas after a rebalance, a
    reprocess beside the live transform) then take their locks in one order and wait
    for each other instead of deadlocking. (Entities are written in the model's order
    by every batch, so across tables the order is one too.)"""
    rows = await connection.fetch(
        f"SELECT * FROM {table.name} WHERE (source_id, source_key) IN "  # noqa: S608 - table names come from the model
        "(SELECT * FROM unnest($1::text[], $2::text[])) "
        'ORDER BY source_id COLLATE "C", source_key COLLATE "C" FOR UPDATE',
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(row["source_id"], row["source_key"]): row for row in rows}


async def insert_rows(
    connection: DbConnection,
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
        f"${i + 1}::{array_type(table.c[column])}" for i, column in enumerate(columns)
    )
    names = ", ".join(columns)
    sql = (
        f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({casts}) "  # noqa: S608
        f"{conflict} RETURNING {returning}"
    )
    return await connection.fetch(sql, *arrays)


async def update_rows(
    connection: DbConnection,
    table: sa.Table,
    rows: list[tuple[dict[str, Any], asyncpg.Record]],
    returning: str = "t.*",
) -> list[asyncpg.Record]:
    """One UPDATE per set of columns written (rows from different source tables may write
    different columns), each stored row by its id."""
    groups: dict[tuple[str, ...], list[tuple[dict[str, Any], asyncpg.Record]]] = defaultdict(list)
    for values, stored in rows:
        groups[tuple(sorted(values))].append((values, stored))
    written: list[asyncpg.Record] = []
    for columns, members in groups.items():
        written += await _update_group(connection, table, columns, members, returning)
    return written


async def _update_group(
    connection: DbConnection,
    table: sa.Table,
    columns: tuple[str, ...],
    members: list[tuple[dict[str, Any], asyncpg.Record]],
    returning: str,
) -> list[asyncpg.Record]:
    arrays = [[stored["id"] for _, stored in members]]
    arrays += [[values[column] for values, _ in members] for column in columns]
    casts = ", ".join(
        [f"$1::{array_type(table.c.id)}"]
        + [f"${i + 2}::{array_type(table.c[column])}" for i, column in enumerate(columns)]
    )
    assignments = ", ".join(f"{column} = u.{column}" for column in columns)
    names = ", ".join(("id", *columns))
    return await connection.fetch(
        f"UPDATE {table.name} AS t SET {assignments} FROM unnest({casts}) "  # noqa: S608
        f"AS u({names}) WHERE t.id = u.id RETURNING {returning}",
        *arrays,
    )
