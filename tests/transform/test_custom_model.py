"""A deployment's own model, by YAML alone: new typed columns on a shipped entity, a code
reference, and an entity of its own nested at the third level (deliveries under order
items under orders), stored through the real transform write path into a database that
``ponte migrate`` built from that model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ponte.shared import db
from ponte.shared.crm_model import crm_model
from ponte.shared.crm_schema import apply_model
from ponte.shared.mapping import load_mapping
from ponte.shared.settings import Settings
from ponte.transform.normalize import normalize_record
from ponte.transform.repository.applier import BatchApplier
from ponte.transform.repository.changes import BatchResult
from tests.transform.conftest import raw_event, transform_api

pytestmark = pytest.mark.integration

MODEL = """
entities:
  company:
    columns:
      credit_limit: {type: decimal, precision: 14, scale: 2}
      region_id: code
  shipment:
    description: One delivery of an order line (the ERP's "Entrega").
    parent: {entity: order_item}
    columns:
      code: text
      shipped_on: date
      quantity: {type: decimal, precision: 12, scale: 3}
      carrier: text
"""

MAPPING = """
kind: erp
tables:
  Regiao:
    entity: code
    key: [tab, cod]
    code_table: {list: tab, key: cod, description: nome, parent_key: pai}
  Cliente:
    entity: company
    key: [cod]
    fields:
      cod: code
      nome: legal_name
      limite: {column: credit_limit, number_format: br}
      regiao: {code: REGIAO, column: region_id}
  Pedido:
    entity: order
    key: [num]
    fields:
      num: code
      cliente: {reference: company, column: company_id}
  Item:
    entity: order_item
    key: [seq]
    parent: {entity: order, column: order_id}
    fields:
      seq: line_number
      qtd: {column: quantity, number_format: br}
  Entrega:
    entity: shipment
    key: [n]
    parent: {entity: order_item, column: order_item_id}
    fields:
      n: code
      data: {column: shipped_on, date_format: "%d.%m.%Y"}
      qtd: {column: quantity, number_format: br}
      transportadora: carrier
"""


@pytest.fixture
async def custom(
    fresh_database: str,
    base_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[asyncpg.Pool, Any]]:
    model_file = tmp_path / "model.yaml"
    model_file.write_text(MODEL, encoding="utf-8")
    monkeypatch.setenv("PONTE_MODEL_FILE", str(model_file))
    await apply_model(fresh_database, crm_model())
    mapping_file = tmp_path / "erp.yaml"
    mapping_file.write_text(MAPPING, encoding="utf-8")
    mapping = load_mapping(mapping_file)
    pool = await db.create_pool(base_settings.model_copy(update={"database_url": fresh_database}))
    try:
        yield pool, mapping
    finally:
        await pool.close()


async def apply(pool: asyncpg.Pool, mapping: Any, *events: Any) -> BatchResult:
    async with pool.acquire() as connection, connection.transaction():
        return await BatchApplier(connection).apply(
            [normalize_record(event, mapping) for event in events]
        )


def order(*, deleted: bool = False, minute: int = 1) -> Any:
    items = [
        {
            "seq": 1,
            "qtd": "10,5",
            "Entregas": {
                "table": "Entrega",
                "rows": [
                    {"n": "E1", "data": "02.12.2026", "qtd": "4,250", "transportadora": "Jadlog"},
                    {"n": "E2", "data": "03.12.2026", "qtd": "6,250"},
                ],
            },
        },
        {"seq": 2, "qtd": "1"},
    ]
    row = {"num": "P1", "cliente": "C1", "Itens": {"table": "Item", "rows": items}}
    return raw_event(
        "Pedido",
        {"num": "P1"} if deleted else row,
        source_id="erp2",
        minute=minute,
        operation="delete" if deleted else "upsert",
    )


async def test_custom_columns_codes_and_a_third_level_entity_land_typed_and_linked(
    custom: tuple[asyncpg.Pool, Any],
) -> None:
    pool, mapping = custom
    region = {"tab": "REGIAO", "cod": "S", "nome": "Sul"}
    company = {"cod": "C1", "nome": "Acme", "limite": "1.234.567,89",
               "regiao": {"$code": {"tabela": "REGIAO", "chave": "S"}}}  # fmt: skip
    result = await apply(
        pool,
        mapping,
        raw_event("Regiao", region, source_id="erp2"),
        raw_event("Cliente", company, source_id="erp2"),
        order(),
    )
    assert result.parked == 0
    stored = await pool.fetchrow("SELECT * FROM companies WHERE source_key = 'C1'")
    assert stored["credit_limit"] == Decimal("1234567.89")
    assert stored["extra"] == {}
    region_id = await pool.fetchval("SELECT id FROM codes WHERE source_key = 'REGIAO:S'")
    assert stored["region_id"] == region_id
    shipments = await pool.fetch(
        "SELECT s.source_key, s.shipped_on, s.quantity, s.carrier, i.line_number, o.code "
        "FROM shipments s JOIN order_items i ON i.id = s.order_item_id "
        "JOIN orders o ON o.id = i.order_id ORDER BY s.source_key"
    )
    assert [tuple(r) for r in shipments] == [
        ("P1/1/E1", date(2026, 12, 2), Decimal("4.250"), "Jadlog", 1, "P1"),
        ("P1/1/E2", date(2026, 12, 3), Decimal("6.250"), None, 1, "P1"),
    ]
    assert {c.entity for c in result.changes} >= {"shipment", "order_item", "company"}
    assert await pool.fetchval("SELECT count(*) FROM shipments WHERE extra <> '{}'") == 0


async def test_deleting_the_root_deletes_every_level_and_a_repeat_changes_nothing(
    custom: tuple[asyncpg.Pool, Any],
) -> None:
    pool, mapping = custom
    await apply(pool, mapping, raw_event("Cliente", {"cod": "C1"}, source_id="erp2"), order())
    repeated = await apply(pool, mapping, order())
    assert repeated.changes == []  # the same version again: nothing to write
    await apply(pool, mapping, order(deleted=True, minute=2))
    live = await pool.fetchval("SELECT count(*) FROM shipments WHERE deleted_at IS NULL")
    assert live == 0
    assert await pool.fetchval("SELECT count(*) FROM shipments") == 2
    # An older version arriving after the delete brings nothing back, at any level.
    await apply(pool, mapping, order(minute=1))
    assert await pool.fetchval("SELECT count(*) FROM shipments WHERE deleted_at IS NULL") == 0


def test_a_mapping_into_a_column_the_model_lacks_points_at_the_model_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "erp.yaml"
    path.write_text(
        "kind: erp\ntables:\n  Cliente:\n    entity: company\n    key: [cod]\n"
        "    fields:\n      limite: {column: credit_limit, number_format: br}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"line 7: tables.Cliente.fields.limite") as error:
        load_mapping(path)
    assert "PONTE_MODEL_FILE" in str(error.value)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("{column: credit_limit, type: date}", "type 'date' cannot be written into column"),
        ("{column: region_id}", "holds the id of a code: map the field as"),
    ],
)
def test_a_field_that_does_not_fit_its_columns_type_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, message: str
) -> None:
    model_file = tmp_path / "model.yaml"
    model_file.write_text(MODEL, encoding="utf-8")
    monkeypatch.setenv("PONTE_MODEL_FILE", str(model_file))
    path = tmp_path / "erp.yaml"
    path.write_text(
        f"kind: erp\ntables:\n  Cliente:\n    entity: company\n    key: [cod]\n"
        f"    fields:\n      x: {field}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=message):
        load_mapping(path)


async def test_the_read_api_lists_counts_and_reads_a_custom_entity(
    custom: tuple[asyncpg.Pool, Any], base_settings: Settings
) -> None:
    pool, mapping = custom
    await apply(pool, mapping, raw_event("Cliente", {"cod": "C1"}, source_id="erp2"), order())
    async with transform_api(base_settings, pool) as client:
        described = (await client.get("/model")).json()
        counts = {c["entity"]: c for c in (await client.get("/entities")).json()}
        rows = (await client.get("/entities/shipment/rows", params={"limit": 1})).json()
        second = await client.get(
            "/entities/shipment/rows", params={"after_id": rows["next_after_id"]}
        )
        unknown = await client.get("/entities/visita/rows")
    assert described["digest"] == crm_model().digest
    assert described["entities"]["shipment"]["parent"] == {
        "entity": "order_item",
        "column": "order_item_id",
    }
    assert described["entities"]["company"]["columns"]["credit_limit"] == {
        "type": "decimal",
        "precision": 14,
        "scale": 2,
    }
    assert counts["shipment"] == {
        "entity": "shipment",
        "table": "shipments",
        "parent": "order_item",
        "live": 2,
        "deleted": 0,
    }
    assert rows["count"] == 2 and rows["items"][0]["source_key"] == "P1/1/E1"
    assert [r["source_key"] for r in second.json()["items"]] == ["P1/1/E2"]
    assert second.json()["next_after_id"] is None
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_entity"


async def test_the_transform_refuses_a_database_not_migrated_to_its_model(
    fresh_database: str, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ponte.shared.crm_schema import ModelNotApplied, check_applied

    await apply_model(fresh_database, crm_model())  # the shipped model only
    model_file = tmp_path / "model.yaml"
    model_file.write_text(MODEL, encoding="utf-8")
    monkeypatch.setenv("PONTE_MODEL_FILE", str(model_file))
    pool = await db.create_pool(base_settings.model_copy(update={"database_url": fresh_database}))
    try:
        with pytest.raises(ModelNotApplied, match="Run `ponte migrate` with the same"):
            await check_applied(pool, crm_model())
        await apply_model(fresh_database, crm_model())
        await check_applied(pool, crm_model())  # now it is
    finally:
        await pool.close()
