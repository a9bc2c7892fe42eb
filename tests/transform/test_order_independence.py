"""Property: any shuffle of a set of events, with any of them repeated and cut into any
batches, leaves the same final database state (deletes, tombstones, children sets,
forward references and code hierarchies included)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponte.shared.crm_model import crm_model
from ponte.shared.db import init_connection
from ponte.shared.events import RawEvent
from ponte.shared.mapping import default_mapping
from ponte.shared.settings import Settings
from ponte.transform.normalize import normalize_record
from ponte.transform.repository.applier import BatchApplier
from ponte.transform.repository.tables import table_of
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration
ERP = default_mapping("erp")


def item(seq: int, price: str) -> dict[str, Any]:
    return {"seq": seq, "produto": f"P{seq}", "quantidade": "1", "preco": price}


# (table, row, minute, operation): the minute is the event's occurred_at, its version.
EVENTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("Tabela de tabelas", {"tabela": "UF", "chave": "PR", "descricao": "Paraná"}, 1, "upsert"),
    (
        "Tabela de tabelas",
        {
            "tabela": "CIDADE",
            "chave": "CWB",
            "descricao": "Curitiba",
            "chave_pai": "PR",
            "tabela_pai": "UF",
        },
        2,
        "upsert",
    ),
    ("Vendedor", {"codigo": "V1", "nome": "Vera"}, 1, "upsert"),
    (
        "Empresa",
        {
            "codigo": "E1",
            "razao_social": "Acme",
            "vendedor": "V1",
            "segmento": {"$code": {"tabela": "SEG", "chave": "IND"}},
        },
        1,
        "upsert",
    ),
    ("Empresa", {"codigo": "E1", "razao_social": "Acme Ltda", "vendedor": "V2"}, 3, "upsert"),
    ("Contato", {"codigo": "C1", "nome": "Ana", "empresa": "E1", "conjuge": "C2"}, 1, "upsert"),
    ("Contato", {"codigo": "C2", "nome": "Bruno", "conjuge": "C1"}, 1, "upsert"),
    (
        "Pedido",
        {
            "codigo": "PED-1",
            "empresa": "E1",
            "total": "3,00",
            "Itens pedido": [item(1, "1,00"), item(2, "1,00"), item(3, "1,00")],
        },
        1,
        "upsert",
    ),
    (
        "Pedido",
        {
            "codigo": "PED-1",
            "empresa": "E1",
            "total": "2,00",
            "Itens pedido": [item(1, "1,00"), item(2, "1,00")],
        },
        2,
        "upsert",
    ),
    ("Itens pedido", {"pedido": "PED-1", "seq": 2, "preco": "9,99"}, 4, "upsert"),
    ("Pedido", {"codigo": "PED-2", "empresa": "E9", "total": "5,00"}, 1, "upsert"),
    ("Pedido", {"codigo": "PED-2"}, 5, "delete"),
    ("Pedido", {"codigo": "PED-3"}, 5, "delete"),
    ("Pedido", {"codigo": "PED-3", "total": "7,00"}, 4, "upsert"),
    ("Nota", {"numero": "N1", "pedido": "PED-1", "Itens nota": [item(1, "2,00")]}, 1, "upsert"),
    # Children sent on their own, older than the parent version that replaced the set they
    # would join: item 3 is newer than PED-1's first version (which carried it) but older
    # than the second (which dropped it); PED-3's item is older than PED-3's delete.
    ("Itens pedido", {"pedido": "PED-1", **item(3, "1,00")}, 1, "upsert"),
    ("Itens pedido", {"pedido": "PED-3", **item(1, "1,00")}, 2, "upsert"),
]
IDS = [f"evt_{index:03d}/0" for index in range(len(EVENTS))]


def events_for(source_id: str, order: list[int]) -> list[RawEvent]:
    return [
        raw_event(
            EVENTS[i][0],
            EVENTS[i][1],
            source_id=source_id,
            minute=EVENTS[i][2],
            operation=EVENTS[i][3],
            event_id=IDS[i],
        )
        for i in order
    ]


async def apply_in_batches(dsn: str, events: list[RawEvent], cuts: list[int]) -> None:
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        start = 0
        for end in [*sorted(set(cuts)), len(events)]:
            batch = events[start:end]
            start = end
            if batch:
                async with connection.transaction():
                    await BatchApplier(connection).apply(
                        [normalize_record(event, ERP) for event in batch]
                    )
    finally:
        await connection.close()


async def snapshot(dsn: str, source_id: str) -> dict[str, Any]:
    """The source's rows with surrogate ids replaced by the keys they point at."""
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        keys: dict[tuple[str, int], str] = {}
        tables: dict[str, list[dict[str, Any]]] = {}
        for entity in crm_model().entities:
            table = table_of(entity)
            rows = await connection.fetch(
                f"SELECT * FROM {table.name} WHERE source_id = $1", source_id
            )
            # Live rows: a tombstone and a row never written are the same state (a child
            # dropped by a version this batch never applied leaves no tombstone).
            rows = [row for row in rows if row["deleted_at"] is None]
            for row in rows:
                keys[(table.name, row["id"])] = row["source_key"]
            tables[table.name] = [dict(row) for row in rows]
        referenced: set[tuple[str, int]] = set()
        for entity in crm_model().entities:
            table = table_of(entity)
            for column in table.columns:
                for key in column.foreign_keys:
                    referenced |= {
                        (key.column.table.name, row[column.name])
                        for row in tables[table.name]
                        if row[column.name]
                    }
        # A placeholder (a code, product or brand known only by key, no version) that an
        # older, superseded version created and nothing points at any more is not state.
        for name, rows in tables.items():
            tables[name] = [
                row
                for row in rows
                if row["version_event_id"] is not None or (name, row["id"]) in referenced
            ]
        result: dict[str, Any] = {}
        for entity in crm_model().entities:
            table = table_of(entity)
            foreign = {
                column.name: next(iter(column.foreign_keys)).column.table.name
                for column in table.columns
                if column.foreign_keys
            }
            result[table.name] = sorted(
                tuple(
                    sorted(
                        (
                            name,
                            repr(
                                keys.get((foreign[name], value))
                                if name in foreign and value
                                else value
                            ),
                        )
                        for name, value in row.items()
                        if name not in {"id", "source_id", "updated_at", "extra"}
                    )
                )
                for row in tables[table.name]
            )
        parked = await connection.fetch(
            "SELECT entity, column_name, target_entity, target_key FROM parked_references "
            "WHERE source_id = $1",
            source_id,
        )
        result["parked"] = sorted(tuple(row) for row in parked)
        return result
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def dsn(base_settings: Settings) -> str:
    return base_settings.asyncpg_dsn


@pytest.fixture(scope="module")
def expected(dsn: str) -> dict[str, Any]:
    source_id = f"order-{uuid.uuid4().hex[:8]}"
    asyncio.run(apply_in_batches(dsn, events_for(source_id, list(range(len(EVENTS)))), []))
    state = asyncio.run(snapshot(dsn, source_id))
    # Sanity: the expectation is itself what the rules say.
    orders = {dict(row)["source_key"] for row in state["orders"]}
    assert orders == {"'PED-1'"}  # PED-2 and PED-3 deleted
    items = {dict(row)["source_key"]: dict(row) for row in state["order_items"]}
    # PED-1/3 dropped by the newer order, whether nested or sent alone; PED-3/1 deleted
    # with its order.
    assert set(items) == {"'PED-1/1'", "'PED-1/2'"}
    assert items["'PED-1/2'"]["unit_price"] == "Decimal('9.9900')"  # the newest, sent alone
    assert ("company", "salesperson_id", "salesperson", "V2") in state["parked"]
    return state


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order=st.permutations(range(len(EVENTS))),
    repeats=st.lists(st.integers(0, len(EVENTS) - 1), max_size=6),
    cuts=st.lists(st.integers(0, len(EVENTS) + 6), max_size=5),
)
def test_any_order_any_repeats_same_state(
    dsn: str, expected: dict[str, Any], order: list[int], repeats: list[int], cuts: list[int]
) -> None:
    source_id = f"order-{uuid.uuid4().hex[:8]}"
    sequence = list(order)
    for position, index in enumerate(repeats):
        sequence.insert(position * 3 % (len(sequence) + 1), index)
    asyncio.run(apply_in_batches(dsn, events_for(source_id, sequence), cuts))
    assert asyncio.run(snapshot(dsn, source_id)) == expected
