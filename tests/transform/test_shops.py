"""Shopify and WooCommerce payloads into the CRM model (recorded sample payloads in
``cases/``, in the shape of the shops' public webhook documentation)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ponte.shared.source_kinds import SourceKind
from ponte.transform.decode import Decoder
from ponte.transform.repository.applier import BatchApplier
from tests.transform.conftest import raw_event

CASES = Path(__file__).parent / "cases"


def case(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CASES / name).read_text())
    return loaded


def decode(
    kind: SourceKind,
    topic: str,
    body: dict[str, Any],
    source_id: str = "shop",
    operation: str = "upsert",
) -> Any:
    event = raw_event(topic, body, source_id=source_id, kind=kind, operation=operation)
    return Decoder().decode(event.model_dump_json().encode())


def test_shopify_order_describes_customer_company_and_order() -> None:
    decoded = decode(SourceKind.SHOPIFY, "orders/create", case("shopify_order.json"))
    assert decoded.rejection is None
    entities = [(r.root.entity, r.root.source_key) for r in decoded.records]
    assert entities == [
        ("company", "acme ltda"),
        ("contact", "115310627314723954"),
        ("order", "820982911946154508"),
    ]
    order = decoded.records[-1]
    assert order.root.values["total"] == Decimal("1234.56")
    assert [r.values["unit_price"] for r in order.rows[1:]] == [
        Decimal("199.00"),
        Decimal("517.78"),
    ]
    contact = decoded.records[1]
    assert contact.version.at is not None and contact.version.at.day == 10  # its own updated_at
    assert contact.root.values["name"] == "John Smith"


def test_woocommerce_guest_cancelled_order() -> None:
    decoded = decode(SourceKind.WOOCOMMERCE, "order.updated", case("woocommerce_order.json"))
    assert decoded.rejection is None
    contact, order = decoded.records
    assert contact.root.source_key == "guest:maria@example.com"
    assert order.root.values["cancelled_at"] is not None
    assert order.root.values["issued_at"].utcoffset().total_seconds() == 0  # GMT, not SP
    assert order.rows[1].values["unit_price"] == Decimal("3")


def test_shop_delete_topics_are_deletes() -> None:
    decoded = decode(SourceKind.SHOPIFY, "customers/delete", {"id": 5}, operation="delete")
    assert [(r.root.entity, r.operation.value) for r in decoded.records] == [("contact", "delete")]


def test_unknown_shop_topic_is_reported_not_crashed() -> None:
    decoded = decode(SourceKind.SHOPIFY, "app/uninstalled", {"id": 1})
    assert decoded.records == [] and decoded.unmapped == {("app/uninstalled", "*")}


@pytest.mark.integration
async def test_shopify_order_lands_linked(pool: asyncpg.Pool, source_id: str) -> None:
    decoded = decode(SourceKind.SHOPIFY, "orders/create", case("shopify_order.json"), source_id)
    async with pool.acquire() as connection, connection.transaction():
        await BatchApplier(connection).apply(decoded.records)
    order = await pool.fetchrow("SELECT * FROM orders WHERE source_id = $1", source_id)
    contact = await pool.fetchrow("SELECT * FROM contacts WHERE source_id = $1", source_id)
    company = await pool.fetchrow("SELECT * FROM companies WHERE source_id = $1", source_id)
    assert order["contact_id"] == contact["id"] and order["company_id"] == company["id"]
    assert contact["company_id"] == company["id"] and company["legal_name"] == "Acme Ltda"
    items = await pool.fetch("SELECT * FROM order_items WHERE order_id = $1", order["id"])
    assert len(items) == 2 and all(item["product_id"] for item in items)
