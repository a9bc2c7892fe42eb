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


# --- order lines, phones, refunds, guests ---------------------------------------------------


async def apply(pool: asyncpg.Pool, *decoded: Any) -> None:
    """The real write path, one batch per decoded event (as separate deliveries arrive)."""
    for one in decoded:
        assert one.rejection is None, one.rejection
        async with pool.acquire() as connection, connection.transaction():
            await BatchApplier(connection).apply(one.records)


def test_shopify_lines_keep_their_own_sku_variant_discount_and_total() -> None:
    decoded = decode(SourceKind.SHOPIFY, "orders/updated", case("shopify_order_refunded.json"))
    assert decoded.rejection is None
    order = decoded.records[-1]
    lines = [r.values for r in order.rows if r.entity == "order_item"]
    assert [(v["sku"], v["variant_id"], v["variant_title"]) for v in lines] == [
        ("IPOD2008GREEN", "39072856", "green"),
        ("IPOD2008RED", "49148385", "red"),
        (None, None, None),  # a custom line: no product, no variant
    ]
    assert [(v["unit_price"], v["discount"], v["total"]) for v in lines] == [
        (Decimal("199.00"), Decimal("10.00"), Decimal("189.00")),
        (Decimal("204.97"), Decimal("0.00"), Decimal("409.94")),
        (Decimal("0.00"), Decimal("0.00"), Decimal("0.00")),
    ]


def test_shopify_contact_phone_falls_back_to_the_order_addresses() -> None:
    decoded = decode(SourceKind.SHOPIFY, "orders/updated", case("shopify_order_refunded.json"))
    contact = next(r for r in decoded.records if r.root.entity == "contact")
    assert contact.root.values["phone"] == "+55 51 3333-4444"  # billing before shipping
    body = case("shopify_order_refunded.json")
    body["customer"]["phone"] = "+55 51 1111-2222"
    contact = next(
        r
        for r in decode(SourceKind.SHOPIFY, "orders/updated", body).records
        if r.root.entity == "contact"
    )
    assert contact.root.values["phone"] == "+55 51 1111-2222"  # the customer's own wins


def test_shopify_refunds_in_an_order_have_amounts_and_lines() -> None:
    decoded = decode(SourceKind.SHOPIFY, "orders/updated", case("shopify_order_refunded.json"))
    order = decoded.records[-1]
    (refund,) = [r for r in order.rows if r.entity == "refund"]
    assert refund.source_key == "450789469/509562969"
    assert refund.values["amount"] == Decimal("204.97")  # the failed attempt returned nothing
    assert refund.values["currency"] == "BRL" and refund.values["reason"] == "Damaged in transit"
    assert refund.values["created_at"].isoformat() == "2024-11-22T16:29:00-03:00"
    (line,) = [r for r in order.rows if r.entity == "refund_line"]
    assert line.values["quantity"] == 1 and line.values["amount"] == Decimal("204.97")
    (item_ref,) = [ref for ref in line.references if ref.column == "order_item_id"]
    assert (item_ref.target_entity, item_ref.target_key) == ("order_item", "450789469/518995019")


def test_shopify_refund_create_is_a_refund_of_its_order() -> None:
    decoded = decode(SourceKind.SHOPIFY, "refunds/create", case("shopify_refund_create.json"))
    assert decoded.rejection is None
    (record,) = decoded.records
    assert (record.root.entity, record.root.source_key) == ("refund", "450789469/929361467")
    assert record.root.values["amount"] == Decimal("15.00")
    assert record.version.at is not None and record.version.at.day == 23  # its own time


def test_shopify_refund_with_an_unreadable_amount_is_refused_by_field() -> None:
    body = case("shopify_refund_create.json")
    body["transactions"][0]["amount"] = "fifteen"
    decoded = decode(SourceKind.SHOPIFY, "refunds/create", body)
    assert decoded.rejection is not None and decoded.rejection.field == "refunds.amount"
    assert "is not a number" in decoded.rejection.reason


def test_woocommerce_lines_variants_refunds_and_shipping_phone() -> None:
    decoded = decode(
        SourceKind.WOOCOMMERCE, "order.updated", case("woocommerce_order_refunded.json")
    )
    assert decoded.rejection is None
    contact, order = decoded.records
    assert contact.root.source_key == "26"
    assert contact.root.values["phone"] == "(81) 97777-6666"  # billing phone empty
    lines = [r.values for r in order.rows if r.entity == "order_item"]
    assert [(v["sku"], v["variant_id"], v["variant_title"]) for v in lines] == [
        ("CAM-AZ-M", "23", "Cor: Azul, Tamanho: M"),  # WooCommerce's own meta left out
        ("CANECA", None, None),
    ]
    assert [(v["unit_price"], v["discount"], v["total"]) for v in lines] == [
        (Decimal("47.5"), Decimal("5.00"), Decimal("95.00")),
        (Decimal("40"), Decimal("0.00"), Decimal("40.00")),
    ]
    (refund,) = [r for r in order.rows if r.entity == "refund"]
    assert refund.source_key == "1843/1850"
    assert (refund.values["amount"], refund.values["currency"]) == (Decimal("40.00"), "BRL")
    assert refund.values["reason"] == "Caneca quebrada"


def test_shopify_guest_order_describes_a_guest_contact_by_email() -> None:
    decoded = decode(SourceKind.SHOPIFY, "orders/create", case("shopify_guest_order.json"))
    assert decoded.rejection is None
    contact, order = decoded.records
    assert contact.root.source_key == "guest:ana.lima@example.com"
    assert contact.root.values["email"] == "ana.lima@example.com"
    assert contact.root.values["phone"] == "(41) 98888-7777"  # the shipping address's
    (ref,) = [r for r in order.root.references if r.column == "contact_id"]
    assert ref.target_key == "guest:ana.lima@example.com"


@pytest.mark.integration
async def test_shopify_refunded_order_lands_with_lines_and_refunds(
    pool: asyncpg.Pool, source_id: str
) -> None:
    body = case("shopify_order_refunded.json")
    await apply(pool, decode(SourceKind.SHOPIFY, "orders/updated", body, source_id))
    order = await pool.fetchrow("SELECT * FROM orders WHERE source_id = $1", source_id)
    items = await pool.fetch(
        "SELECT * FROM order_items WHERE order_id = $1 ORDER BY source_key", order["id"]
    )
    assert [(i["sku"], i["variant_title"], i["discount"], i["total"]) for i in items] == [
        ("IPOD2008GREEN", "green", Decimal("10.0000"), Decimal("189.0000")),
        ("IPOD2008RED", "red", Decimal("0.0000"), Decimal("409.9400")),
        (None, None, Decimal("0.0000"), Decimal("0.0000")),
    ]
    refund = await pool.fetchrow("SELECT * FROM refunds WHERE order_id = $1", order["id"])
    assert refund["amount"] == Decimal("204.9700") and refund["code"] == "509562969"
    line = await pool.fetchrow("SELECT * FROM refund_lines WHERE refund_id = $1", refund["id"])
    red = next(i for i in items if i["sku"] == "IPOD2008RED")
    assert line["order_item_id"] == red["id"] and line["quantity"] == Decimal("1")
    # refunds/create sent alone afterwards: a second refund of the same order.
    await apply(
        pool,
        decode(SourceKind.SHOPIFY, "refunds/create", case("shopify_refund_create.json"), source_id),
    )
    refunds = await pool.fetch(
        "SELECT code, amount FROM refunds WHERE order_id = $1 AND deleted_at IS NULL ORDER BY code",
        order["id"],
    )
    assert [(r["code"], r["amount"]) for r in refunds] == [
        ("509562969", Decimal("204.9700")),
        ("929361467", Decimal("15.0000")),
    ]


async def contacts_of(pool: asyncpg.Pool, source_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM contacts WHERE source_id = $1 AND deleted_at IS NULL", source_id
        )
    )


@pytest.mark.integration
async def test_guest_order_after_registration_joins_the_registered_contact(
    pool: asyncpg.Pool, source_id: str
) -> None:
    """WooCommerce: the customer registered first; a guest order with the same e-mail (in
    another case) is theirs."""
    customer = decode(
        SourceKind.WOOCOMMERCE, "customer.created", case("woocommerce_customer.json"), source_id
    )
    guest_order = decode(
        SourceKind.WOOCOMMERCE, "order.updated", case("woocommerce_order.json"), source_id
    )
    await apply(pool, customer, guest_order)
    (contact,) = await contacts_of(pool, source_id)
    assert contact["source_key"] == "41" and contact["name"] == "Maria Souza Lima"
    order = await pool.fetchrow("SELECT * FROM orders WHERE source_id = $1", source_id)
    assert order["contact_id"] == contact["id"]


@pytest.mark.integration
async def test_registration_after_a_guest_order_takes_over_the_guest_contact(
    pool: asyncpg.Pool, source_id: str
) -> None:
    """WooCommerce: the guest ordered first, then registered; the order was modified after
    the registration's time (so the guest row is newer than the customer record)."""
    body = case("woocommerce_order.json")
    body["date_modified_gmt"] = "2024-11-17T10:00:00"
    guest_order = decode(SourceKind.WOOCOMMERCE, "order.updated", body, source_id)
    await apply(pool, guest_order)
    (guest,) = await contacts_of(pool, source_id)
    assert guest["source_key"] == "guest:maria@example.com"
    customer = decode(
        SourceKind.WOOCOMMERCE, "customer.created", case("woocommerce_customer.json"), source_id
    )
    await apply(pool, customer)
    (contact,) = await contacts_of(pool, source_id)
    assert contact["id"] == guest["id"] and contact["source_key"] == "41"
    assert contact["name"] == "Maria Souza Lima"  # the customer's record, not the guest's
    order = await pool.fetchrow("SELECT * FROM orders WHERE source_id = $1", source_id)
    assert order["contact_id"] == contact["id"]
    # The guest order sent again: still theirs, no guest contact comes back.
    await apply(pool, decode(SourceKind.WOOCOMMERCE, "order.updated", body, source_id))
    assert [c["source_key"] for c in await contacts_of(pool, source_id)] == ["41"]
    assert await pool.fetchval("SELECT count(*) FROM contacts WHERE source_id = $1", source_id) == 1


@pytest.mark.integration
async def test_shopify_guest_and_customer_in_one_batch_are_one_contact(
    pool: asyncpg.Pool, source_id: str
) -> None:
    guest_order = decode(
        SourceKind.SHOPIFY, "orders/create", case("shopify_guest_order.json"), source_id
    )
    customer = decode(
        SourceKind.SHOPIFY,
        "customers/create",
        {
            "id": 706405506930370000,
            "email": "ana.lima@example.com",
            "first_name": "Ana",
            "last_name": "Lima",
            "phone": None,
            "updated_at": "2024-11-21T09:00:00-03:00",
            "default_address": {"address1": "Rua XV, 200", "city": "Curitiba",
                                "phone": "(41) 3222-1111"},
        },
        source_id,
    )  # fmt: skip
    async with pool.acquire() as connection, connection.transaction():
        await BatchApplier(connection).apply([*guest_order.records, *customer.records])
    (contact,) = await contacts_of(pool, source_id)
    assert contact["source_key"] == "706405506930370000"
    assert contact["phone"] == "(41) 3222-1111"  # its default address's phone
    order = await pool.fetchrow("SELECT * FROM orders WHERE source_id = $1", source_id)
    assert order["contact_id"] == contact["id"]


@pytest.mark.integration
async def test_two_guest_orders_of_one_email_are_one_guest_contact(
    pool: asyncpg.Pool, source_id: str
) -> None:
    first = case("woocommerce_order.json")
    second = {**first, "id": 728, "number": "728"}
    second["billing"] = {**first["billing"], "email": " MARIA@example.com "}
    await apply(
        pool,
        decode(SourceKind.WOOCOMMERCE, "order.created", first, source_id),
        decode(SourceKind.WOOCOMMERCE, "order.created", second, source_id),
    )
    (contact,) = await contacts_of(pool, source_id)
    assert contact["source_key"] == "guest:maria@example.com"
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM orders WHERE source_id = $1 AND contact_id = $2",
            source_id,
            contact["id"],
        )
        == 2
    )
