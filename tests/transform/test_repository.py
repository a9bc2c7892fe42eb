"""Applying normalised records to the real PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ponte.shared.events import RawEvent
from ponte.shared.mapping import default_mapping
from ponte.transform.normalize import normalize_record
from ponte.transform.repository.applier import BatchApplier
from ponte.transform.repository.changes import BatchResult
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration
ERP = default_mapping("erp")


async def apply(pool: asyncpg.Pool, *events: RawEvent) -> BatchResult:
    async with pool.acquire() as connection, connection.transaction():
        return await BatchApplier(connection).apply(
            [normalize_record(event, ERP) for event in events]
        )


async def row(pool: asyncpg.Pool, table: str, source_id: str, key: str) -> dict[str, Any]:
    found = await pool.fetchrow(
        f"SELECT * FROM {table} WHERE source_id = $1 AND source_key = $2", source_id, key
    )
    assert found is not None, f"no {table} row {key}"
    return dict(found)


def order(
    code: str = "PED-1", items: list[dict[str, Any]] | None = None, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "codigo": code,
        "empresa": "000123",
        "vendedor": "V07",
        "emissao": "14/11/2024",
        "total": "1.234,56",
        "situacao": {"$code": {"tabela": "SIT_PEDIDO", "chave": "AP"}},
    }
    if items is not None:
        body["Itens pedido"] = {"table": "Itens pedido", "rows": items}
    return {**body, **fields}


async def test_order_with_items_codes_and_forward_references(
    pool: asyncpg.Pool, source_id: str
) -> None:
    result = await apply(
        pool,
        raw_event(
            "Pedido",
            order(
                items=[
                    {"seq": 1, "produto": "P-9", "quantidade": "2", "preco": "617,28"},
                    {"seq": 2, "produto": "P-7", "quantidade": "1", "preco": "0,00"},
                ]
            ),
            source_id=source_id,
        ),
    )

    stored = await row(pool, "orders", source_id, "PED-1")
    assert stored["total"] == Decimal("1234.56")
    assert stored["company_id"] is None and stored["salesperson_id"] is None  # parked
    assert result.parked == 2
    status = await row(pool, "codes", source_id, "SIT_PEDIDO:AP")
    assert stored["status_id"] == status["id"] and status["description"] is None  # a stub
    item = await row(pool, "order_items", source_id, "PED-1/1")
    assert item["order_id"] == stored["id"] and item["unit_price"] == Decimal("617.28")
    product = await row(pool, "products", source_id, "P-9")
    assert item["product_id"] == product["id"] and product["code"] == "P-9"

    # The company arrives later: the parked reference resolves, with a change event.
    result = await apply(
        pool,
        raw_event(
            "Empresa",
            {"codigo": "000123", "cnpj": "11.222.333/0001-81", "razao_social": "ACME"},
            source_id=source_id,
            minute=1,
        ),
    )
    company = await row(pool, "companies", source_id, "000123")
    assert company["document"] == "11222333000181"
    assert (await row(pool, "orders", source_id, "PED-1"))["company_id"] == company["id"]
    assert result.resolved == 1
    assert any(c.entity == "order" and c.changed == ["company_id"] for c in result.changes)
    parked = await pool.fetchval(
        "SELECT count(*) FROM parked_references WHERE source_id = $1", source_id
    )
    assert parked == 1  # the salesperson is still missing


async def test_repeated_and_older_events_change_nothing(pool: asyncpg.Pool, source_id: str) -> None:
    newer = raw_event("Pedido", order(total="10,00"), source_id=source_id, minute=5)
    older = raw_event("Pedido", order(total="99,00"), source_id=source_id, minute=1)
    assert (await apply(pool, newer)).changes
    again = await apply(pool, newer)
    assert again.changes == [] and again.stale_records == 1
    late = await apply(pool, older)
    assert late.changes == []
    assert (await row(pool, "orders", source_id, "PED-1"))["total"] == Decimal("10.00")


async def test_children_are_replaced_as_a_set(pool: asyncpg.Pool, source_id: str) -> None:
    items = [{"seq": n, "produto": "P", "quantidade": "1", "preco": "1"} for n in (1, 2, 3)]
    await apply(pool, raw_event("Pedido", order(items=items), source_id=source_id, minute=1))
    result = await apply(
        pool, raw_event("Pedido", order(items=items[:2]), source_id=source_id, minute=2)
    )
    assert (await row(pool, "order_items", source_id, "PED-1/3"))["deleted_at"] is not None
    assert (await row(pool, "order_items", source_id, "PED-1/2"))["deleted_at"] is None
    assert [(c.entity, c.operation) for c in result.changes] == [("order_item", "delete")]
    # An older version carrying item 3 again is ignored as a whole.
    await apply(pool, raw_event("Pedido", order(items=items), source_id=source_id, minute=0))
    assert (await row(pool, "order_items", source_id, "PED-1/3"))["deleted_at"] is not None


async def test_a_child_sent_alone_older_than_its_parents_set_stays_out(
    pool: asyncpg.Pool, source_id: str
) -> None:
    """The newer order version dropped item 3 before item 3 (older, sent on its own) ever
    arrived: nothing to tombstone, yet the item must not come to life, as it would not
    had it arrived first."""
    items = [{"seq": n, "produto": "P", "quantidade": "1", "preco": "1"} for n in (1, 2)]
    await apply(pool, raw_event("Pedido", order(items=items), source_id=source_id, minute=2))
    alone = {"pedido": "PED-1", "seq": 3, "produto": "P", "quantidade": "1", "preco": "1"}
    late = await apply(pool, raw_event("Itens pedido", alone, source_id=source_id, minute=1))
    assert late.changes == [] and late.stale_records == 1
    live = await pool.fetchval(
        "SELECT count(*) FROM order_items WHERE source_id = $1 AND source_key = 'PED-1/3' "
        "AND deleted_at IS NULL",
        source_id,
    )
    assert live == 0
    # A newer one is a new child of the set.
    newer = await apply(pool, raw_event("Itens pedido", alone, source_id=source_id, minute=3))
    assert newer.stale_records == 0
    assert (await row(pool, "order_items", source_id, "PED-1/3"))["deleted_at"] is None


async def test_a_parked_child_is_dropped_by_its_parents_first_set(
    pool: asyncpg.Pool, source_id: str
) -> None:
    """The other arrival order: the item waits for its order, which then arrives with a
    set that excludes it (or is deleted): the item ends tombstoned either way."""
    alone = {"pedido": "PED-1", "seq": 3, "produto": "P", "quantidade": "1", "preco": "1"}
    await apply(pool, raw_event("Itens pedido", alone, source_id=source_id, minute=1))
    items = [{"seq": 1, "produto": "P", "quantidade": "1", "preco": "1"}]
    await apply(pool, raw_event("Pedido", order(items=items), source_id=source_id, minute=2))
    parent = await row(pool, "orders", source_id, "PED-1")
    dropped = await row(pool, "order_items", source_id, "PED-1/3")
    assert dropped["order_id"] == parent["id"] and dropped["deleted_at"] is not None
    await apply(pool, raw_event("Itens pedido", {**alone, "pedido": "PED-2"}, source_id=source_id))
    await apply(
        pool,
        raw_event("Pedido", {"codigo": "PED-2"}, source_id=source_id, minute=5, operation="delete"),
    )
    assert (await row(pool, "order_items", source_id, "PED-2/3"))["deleted_at"] is not None


async def test_delete_is_a_tombstone_that_beats_older_upserts(
    pool: asyncpg.Pool, source_id: str
) -> None:
    items = [{"seq": 1, "produto": "P", "quantidade": "1", "preco": "1"}]
    await apply(pool, raw_event("Pedido", order(items=items), source_id=source_id, minute=1))
    deleted = await apply(
        pool,
        raw_event("Pedido", {"codigo": "PED-1"}, source_id=source_id, minute=3, operation="delete"),
    )
    assert sorted((c.entity, c.operation) for c in deleted.changes) == [
        ("order", "delete"),
        ("order_item", "delete"),
    ]
    await apply(pool, raw_event("Pedido", order(), source_id=source_id, minute=2))
    assert (await row(pool, "orders", source_id, "PED-1"))["deleted_at"] is not None
    # A delete for a record never seen leaves a tombstone too.
    await apply(
        pool,
        raw_event("Pedido", {"codigo": "PED-9"}, source_id=source_id, minute=5, operation="delete"),
    )
    await apply(pool, raw_event("Pedido", order("PED-9"), source_id=source_id, minute=4))
    assert (await row(pool, "orders", source_id, "PED-9"))["deleted_at"] is not None


async def test_spouse_reference_in_either_order(pool: asyncpg.Pool, source_id: str) -> None:
    ana = raw_event(
        "Contato", {"codigo": "C1", "nome": "Ana", "conjuge": "C2"}, source_id=source_id
    )
    bruno = raw_event(
        "Contato", {"codigo": "C2", "nome": "Bruno", "conjuge": "C1"}, source_id=source_id
    )
    await apply(pool, ana)
    await apply(pool, bruno)
    a = await row(pool, "contacts", source_id, "C1")
    b = await row(pool, "contacts", source_id, "C2")
    assert a["spouse_id"] == b["id"] and b["spouse_id"] == a["id"]


async def test_code_table_hierarchy(pool: asyncpg.Pool, source_id: str) -> None:
    city = raw_event(
        "Tabela de tabelas",
        {
            "tabela": "CIDADE",
            "chave": "CWB",
            "descricao": "Curitiba",
            "chave_pai": "PR",
            "tabela_pai": "UF",
        },
        source_id=source_id,
    )
    state = raw_event(
        "Tabela de tabelas",
        {"tabela": "UF", "chave": "PR", "descricao": "Paraná"},
        source_id=source_id,
        minute=1,
    )
    await apply(pool, city)
    await apply(pool, state)
    pr = await row(pool, "codes", source_id, "UF:PR")
    cwb = await row(pool, "codes", source_id, "CIDADE:CWB")
    assert cwb["parent_id"] == pr["id"] and pr["description"] == "Paraná"


async def test_three_levels_deep_land_linked(
    pool: asyncpg.Pool, source_id: str, tmp_path: Path
) -> None:
    from tests.transform.test_normalize import DEEP_ROW, deep_mapping

    record = normalize_record(
        raw_event("Empresa", DEEP_ROW, source_id=source_id), deep_mapping(tmp_path)
    )
    async with pool.acquire() as connection, connection.transaction():
        await BatchApplier(connection).apply([record])
    company = await row(pool, "companies", source_id, "E1")
    contact = await row(pool, "contacts", source_id, "E1/C1")
    order_row = await row(pool, "orders", source_id, "E1/C1/P1")
    item = await row(pool, "order_items", source_id, "E1/C1/P1/2")
    assert contact["company_id"] == company["id"] and order_row["contact_id"] == contact["id"]
    assert item["order_id"] == order_row["id"] and item["unit_price"] == Decimal("2.00")


async def test_a_resolved_reference_is_a_newer_change_than_the_row_without_it(
    pool: asyncpg.Pool, source_id: str
) -> None:
    """Deliver skips versions it already has: the change that fills a parked reference must
    sort after the change that stored the row without it."""
    first = await apply(pool, raw_event("Pedido", order(), source_id=source_id, minute=1))
    stored = next(c for c in first.changes if c.entity == "order")
    later = await apply(
        pool, raw_event("Empresa", {"codigo": "000123"}, source_id=source_id, minute=0)
    )
    resolved = next(c for c in later.changes if c.entity == "order")
    assert resolved.changed == ["company_id"] and resolved.row["company_id"] is not None
    assert stored.version is not None and resolved.version is not None
    assert resolved.version.newer_than(stored.version)


SQL_LIKE = [
    "Robert'); DROP TABLE companies;--",
    "1 OR 1=1",
    "'; SELECT pg_sleep(10); --",
    '" OR ""="',
    "$1::text; TRUNCATE orders",
]


async def test_sql_like_strings_in_every_field_are_stored_as_data(
    pool: asyncpg.Pool, source_id: str
) -> None:
    fields = ("razao_social", "nome_fantasia", "endereco", "cidade", "telefone", "pais")
    for n, text in enumerate(SQL_LIKE):
        row = {"codigo": f"{text}-{n}", **{name: text for name in fields}}
        await apply(pool, raw_event("Empresa", row, source_id=source_id, minute=n))
    stored = await pool.fetch(
        "SELECT source_key, legal_name, trade_name, street, city, phone, country "
        "FROM companies WHERE source_id = $1 ORDER BY source_key",
        source_id,
    )
    assert len(stored) == len(SQL_LIKE)
    for row in stored:
        text = row["source_key"].rsplit("-", 1)[0]
        assert text in SQL_LIKE
        assert {
            row[c] for c in ("legal_name", "trade_name", "street", "city", "phone", "country")
        } == {text}
    assert await pool.fetchval("SELECT to_regclass('companies') IS NOT NULL")


async def test_a_code_written_as_text_takes_its_description(
    pool: asyncpg.Pool, source_id: str, tmp_path: Path
) -> None:
    from ponte.shared.mapping import load_mapping

    path = tmp_path / "erp.yaml"
    path.write_text(
        "kind: erp\ntables:\n  Codigos:\n    entity: code\n    key: [t, c]\n"
        "    code_table: {list: t, key: c, description: d}\n"
        "  Cliente:\n    entity: company\n    key: [cod]\n"
        "    fields: {cidade: {column: city, on_code: description}}\n",
        encoding="utf-8",
    )
    mapping = load_mapping(path)

    async def store(*events: RawEvent) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await BatchApplier(connection).apply([normalize_record(e, mapping) for e in events])

    def city(key: str, code: str) -> RawEvent:
        row = {"cod": key, "cidade": {"$code": {"tabela": "CIDADE", "chave": code}}}
        return raw_event("Cliente", row, source_id=source_id)

    await store(raw_event("Codigos", {"t": "CIDADE", "c": "SP", "d": "São Paulo"},
                          source_id=source_id))  # fmt: skip
    await store(city("C1", "SP"), city("C2", "XX"))
    assert (await row(pool, "companies", source_id, "C1"))["city"] == "São Paulo"
    assert (await row(pool, "companies", source_id, "C2"))["city"] == "XX"  # unknown: its key
    assert (await row(pool, "codes", source_id, "CIDADE:XX"))["code"] == "XX"  # a placeholder
    with pytest.raises(ValueError, match="on_code: description writes text"):
        path.write_text(
            "kind: erp\ntables:\n  Cliente:\n    entity: company\n    key: [cod]\n"
            "    fields: {x: {column: active, on_code: description}}\n",
            encoding="utf-8",
        )
        load_mapping(path)
