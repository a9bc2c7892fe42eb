"""Shopify and WooCommerce webhook payloads, reshaped into rows the mapping engine reads.

Shops send whole resources in their public formats. The adapters here only *reshape*:
they pick the records a payload describes (an order describes the order, its customer,
and the customer's company when the billing address names one), flatten addresses, and
give each record its own version (the resource's ``updated_at`` / ``date_modified_gmt``).
Types, keys and references are then the mapping's business (``mappings/shopify.yaml``,
``mappings/woocommerce.yaml``), exactly as for an ERP.

**Order lines** keep what was sold on each line: its SKU, variant (id and title),
quantity, unit price, discount and total; the product reference stays the shop's product
id (variants share one product row, so the variant lives on the line). Shopify sends no
line total: it is ``price * quantity - total_discount`` here. WooCommerce's ``price`` is
what it says (the line total over the quantity); its discount is ``subtotal - total``.

**Refunds** are their own entity, children of the order: the ``refunds`` inside an order
(the order's set: a refund no longer listed, while another still is, is tombstoned; an
order listing none any more leaves the stored ones, as the mapping reads only a non-empty
list as child rows), a Shopify ``refunds/create``
sent on its own (linked by ``order_id``), with Shopify's refund lines pointing at the
order lines they return. A refund's amount is positive: Shopify's successful ``refund``
transactions summed; WooCommerce's negative ``total`` negated. WooCommerce lists only
id, reason and total in an order, so its refunds have no date and no lines.

**Phones.** The contact's ``phone`` is the customer's own, else its default address's;
on a contact an order describes, else the order's billing address phone, else the
shipping address's (the model has no address entity: the address a shop stores on the
contact is the billing one, so its phone goes with it). A contact an order described with
an address phone can lose it to a customer webhook of the same customer version without
one: the customer's own record is then the truth.

**Guests.** An order without a customer (Shopify ``customer: null``, WooCommerce
``customer_id: 0``) describes a guest contact keyed ``guest:<e-mail, trimmed, lower
case>`` (``guest_key``): the e-mail is all a guest has, and one key per address makes
a guest's repeated orders one contact. Registered customers keep their shop id as the
key: it survives an e-mail change, and a delete webhook carries nothing else. The two
meet in the write path (``ponte.transform.repository.guests``), both arrival orders:

- a registered contact of the source with that e-mail exists (stored, or in the same
  batch): the guest's order points at it and no guest contact is written;
- the guest came first: when a registered customer with that e-mail arrives and has no
  row yet, the guest's row *becomes* the registered contact (re-keyed, its version
  cleared so the customer's record wins), and the orders already pointing at it stay.

The trade-off: keying every shop contact by e-mail would converge without a write-path
step, but would split a customer who changes e-mail and make a customer delete (id only)
unresolvable. What is left: a guest whose registered contact already exists under
another e-mail that later changes to the guest's stays a second contact (the two stored
rows are not merged); an ERP key starting with ``guest:`` would be read as a guest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ponte.shared.events import Operation, RawEvent
from ponte.shared.source_kinds import SOURCE_KINDS, SourceKind, resource_of


@dataclass
class ShopRecord:
    table: str
    row: dict[str, Any]
    version_at: datetime | None
    operation: Operation = Operation.UPSERT


def _when(value: Any, naive_is_utc: bool = True) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo or not naive_is_utc else parsed.replace(tzinfo=UTC)


def _utc_text(value: Any) -> str | None:
    """WooCommerce's ``*_gmt`` times are naive UTC: make the offset explicit, or the
    mapping would read them as São Paulo time."""
    parsed = _when(value)
    return parsed.isoformat() if parsed else None


def _name(first: Any, last: Any) -> str | None:
    name = " ".join(str(part).strip() for part in (first, last) if part)
    return name or None


GUEST_PREFIX = "guest:"
"""The key of a contact known only by its e-mail (a guest's order)."""


def guest_key(email: Any) -> str | None:
    """A guest's contact key: the e-mail trimmed and lower-cased, as the mapping's e-mail
    parser stores it, so the key and the stored ``email`` column compare equal."""
    if not isinstance(email, str) or not email.strip():
        return None
    return f"{GUEST_PREFIX}{email.strip().lower()}"


def _first(*values: Any) -> Any:
    """The first value that is not empty (a phone from the first address that has one)."""
    return next((v for v in values if v not in (None, "") and not _blank(v)), None)


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def _phone_of(address: Any) -> Any:
    return address.get("phone") if isinstance(address, dict) else None


def _decimal(value: Any) -> Decimal | None:
    """A shop amount (``"199.00"``, ``3``) for the sums this module makes; None when it is
    not one, and then the field itself is refused by the mapping, by name."""
    if isinstance(value, bool) or not isinstance(value, int | float | str) or _blank(value):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _text(number: Decimal | None) -> str | None:
    return None if number is None else format(number, "f")


def _child_table(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A child table for the row, left out when empty: the mapping engine reads only a
    non-empty list as child rows (an empty one would be an unknown field in ``extra``).
    The cost, said plainly: a parent listing none any more does not tombstone the ones
    stored (a WooCommerce refund deleted in the admin stays until the order is deleted)."""
    return {name: rows} if rows else {}


def _id_text(value: Any) -> str | None:
    """An id as text; a shop's 0 ("no variant") is none."""
    return None if value in (None, "", 0, "0") else str(value)


def company_key(name: Any) -> str | None:
    """Shops have no company id: the company is known by its name, case-folded."""
    if not isinstance(name, str) or not name.strip():
        return None
    return " ".join(name.split()).casefold()


def _company(name: Any, version: datetime | None) -> list[ShopRecord]:
    key = company_key(name)
    if key is None:
        return []
    return [ShopRecord("company", {"key": key, "name": " ".join(str(name).split())}, version)]


# --- Shopify -----------------------------------------------------------------------------


def _shopify_address(address: Any) -> dict[str, Any]:
    if not isinstance(address, dict):
        return {}
    return {
        "street": address.get("address1"),
        "city": address.get("city"),
        "state": address.get("province_code") or address.get("province"),
        "postal_code": address.get("zip"),
        "country": address.get("country_code") or address.get("country"),
    }


def _shopify_customer(
    customer: dict[str, Any], fallback: datetime | None, order_phones: tuple[Any, ...] = ()
) -> list[ShopRecord]:
    """The customer (and its company); ``order_phones``: the phones of the order's billing
    and shipping addresses, used when the customer has none of its own."""
    version = _when(customer.get("updated_at")) or fallback
    address = customer.get("default_address") or {}
    records = _company(address.get("company") if isinstance(address, dict) else None, version)
    row = {
        "id": customer.get("id"),
        "name": _name(customer.get("first_name"), customer.get("last_name")),
        "email": customer.get("email"),
        "phone": _first(customer.get("phone"), _phone_of(address), *order_phones),
        "company": company_key(address.get("company")) if isinstance(address, dict) else None,
        **_shopify_address(address),
    }
    return [*records, ShopRecord("customer", row, version)]


def _shopify_guest(body: dict[str, Any], version: datetime | None) -> list[ShopRecord]:
    """The contact of an order without a customer, known by the order's e-mail."""
    email = body.get("email") or body.get("contact_email")
    key = guest_key(email)
    if key is None:
        return []  # no e-mail: nobody to keep; the order is stored without a contact
    billing = body.get("billing_address") or {}
    shipping = body.get("shipping_address") or {}
    name_from = billing if isinstance(billing, dict) and billing else shipping
    row = {
        "id": key,
        "name": _name(name_from.get("first_name"), name_from.get("last_name"))
        if isinstance(name_from, dict)
        else None,
        "email": email,
        "phone": _first(body.get("phone"), _phone_of(billing), _phone_of(shipping)),
        "company": company_key(billing.get("company")) if isinstance(billing, dict) else None,
        **_shopify_address(billing),
    }
    return [ShopRecord("customer", row, version)]


def _shopify_line(item: dict[str, Any]) -> dict[str, Any]:
    price, quantity = _decimal(item.get("price")), _decimal(item.get("quantity"))
    discount = _decimal(item.get("total_discount"))
    if discount is None and isinstance(item.get("discount_allocations"), list):
        amounts = [_decimal(a.get("amount")) for a in item["discount_allocations"] if a]
        discount = sum((a for a in amounts if a is not None), Decimal(0)) if amounts else None
    total = price * quantity - (discount or 0) if price is not None and quantity else None
    return {
        "id": item.get("id"),
        "product_id": item.get("product_id"),
        "sku": item.get("sku"),
        "variant_id": _id_text(item.get("variant_id")),
        "variant_title": item.get("variant_title"),
        "title": item.get("title"),
        "quantity": item.get("quantity"),
        "price": item.get("price"),
        "discount": _text(discount),
        "total": _text(total),
    }


def _shopify_refund(refund: dict[str, Any], order_id: Any) -> dict[str, Any]:
    """A refund's amount: its successful refund transactions summed (what the customer got
    back; a failed or pending attempt returned nothing)."""
    transactions = [t for t in refund.get("transactions") or [] if isinstance(t, dict)]
    paid = [
        t
        for t in transactions
        if t.get("kind") == "refund" and t.get("status") in ("success", None)
    ]
    amounts = [_decimal(t.get("amount")) for t in paid]
    amount: Any = sum((a for a in amounts if a is not None), Decimal(0)) if paid else None
    unreadable = [t.get("amount") for t, a in zip(paid, amounts, strict=True) if a is None]
    if unreadable:  # never a sum without it: the mapping refuses it, naming the field
        amount = unreadable[0]
    lines = [line for line in refund.get("refund_line_items") or [] if isinstance(line, dict)]
    return {
        "id": refund.get("id"),
        "order_id": refund.get("order_id") or order_id,
        "amount": _text(amount) if isinstance(amount, Decimal) else amount,
        "currency": next((t.get("currency") for t in paid if t.get("currency")), None),
        "reason": refund.get("note"),
        "created_at": refund.get("processed_at") or refund.get("created_at"),
        **_child_table(
            "refund_line_items",
            [
                {
                    "id": line.get("id"),
                    "line_item": f"{order_id}/{line['line_item_id']}"
                    if order_id is not None and line.get("line_item_id") is not None
                    else None,
                    "quantity": line.get("quantity"),
                    "subtotal": line.get("subtotal"),
                }
                for line in lines
            ],
        ),
    }


def _shopify_order(body: dict[str, Any], version: datetime | None) -> list[ShopRecord]:
    records: list[ShopRecord] = []
    customer = body.get("customer")
    billing = body.get("billing_address") or {}
    phones = (_phone_of(billing), _phone_of(body.get("shipping_address")))
    if isinstance(customer, dict) and customer.get("id") is not None:
        records += _shopify_customer(customer, version, phones)
        contact = customer["id"]
    else:
        guest = _shopify_guest(body, version)
        records += guest
        contact = guest[0].row["id"] if guest else None
    records += _company(billing.get("company") if isinstance(billing, dict) else None, version)
    order_id = body.get("id")
    row = {
        "id": order_id,
        "name": body.get("name"),
        "created_at": body.get("created_at"),
        "currency": body.get("currency"),
        "total_price": body.get("total_price"),
        "financial_status": body.get("financial_status"),
        "cancelled_at": body.get("cancelled_at"),
        "customer": contact,
        "company": company_key(billing.get("company")) if isinstance(billing, dict) else None,
        "line_items": [
            _shopify_line(item) for item in body.get("line_items") or [] if isinstance(item, dict)
        ],
        **_child_table(
            "refunds",
            [
                _shopify_refund(refund, order_id)
                for refund in body.get("refunds") or []
                if isinstance(refund, dict)
            ],
        ),
    }
    records.append(ShopRecord("order", row, version))
    return records


def shopify_records(resource: str, body: dict[str, Any], deleted: bool) -> list[ShopRecord]:
    version = _when(body.get("updated_at"))
    if deleted:
        table = {"orders": "order", "customers": "customer", "products": "product"}.get(resource)
        return (
            [ShopRecord(table, {"id": body.get("id")}, version, Operation.DELETE)] if table else []
        )
    if resource == "customers":
        return _shopify_customer(body, version)
    if resource == "products":
        variants = body.get("variants") or [{}]
        first = variants[0] if isinstance(variants, list) and variants else {}
        return [
            ShopRecord(
                "product",
                {
                    "id": body.get("id"),
                    "title": body.get("title"),
                    "sku": first.get("sku"),
                    "price": first.get("price"),
                    "status": body.get("status"),
                },
                version,
            )
        ]
    if resource == "refunds":  # refunds/create: one refund, linked to its order by order_id
        refund = _shopify_refund(body, body.get("order_id"))
        return [ShopRecord("refunds", refund, _when(refund["created_at"]) or version)]
    if resource != "orders":
        return []
    return _shopify_order(body, version)


# --- WooCommerce -------------------------------------------------------------------------


def _woo_address(address: Any) -> dict[str, Any]:
    if not isinstance(address, dict):
        return {}
    return {
        "street": address.get("address_1"),
        "city": address.get("city"),
        "state": address.get("state"),
        "postal_code": address.get("postcode"),
        "country": address.get("country"),
    }


def _woo_version(body: dict[str, Any]) -> datetime | None:
    return _when(body.get("date_modified_gmt")) or _when(body.get("date_modified"), False)


def _woo_contact(body: dict[str, Any], key: Any, version: datetime | None) -> ShopRecord:
    """A contact from a customer or an order: its billing address, the shipping address's
    phone when the billing one has none."""
    billing = body.get("billing") or {}
    return ShopRecord(
        "customer",
        {
            "id": key,
            "name": _name(
                body.get("first_name") or billing.get("first_name"),
                body.get("last_name") or billing.get("last_name"),
            ),
            "email": body.get("email") or billing.get("email"),
            "phone": _first(_phone_of(billing), _phone_of(body.get("shipping"))),
            "company": company_key(billing.get("company")),
            **_woo_address(billing),
        },
        version,
    )


def _woo_variant_title(item: dict[str, Any]) -> str | None:
    """A variation's attributes as the shop shows them (``Color: Red, Size: M``): the line's
    visible meta data (WooCommerce hides its own under keys starting with ``_``)."""
    if _id_text(item.get("variation_id")) is None:
        return None
    shown = [
        f"{meta.get('display_key') or meta.get('key')}: "
        f"{meta.get('display_value') or meta.get('value')}"
        for meta in item.get("meta_data") or []
        if isinstance(meta, dict)
        and not str(meta.get("key", "_")).startswith("_")
        and isinstance(meta.get("display_value") or meta.get("value"), str | int | float)
    ]
    return ", ".join(shown) or None


def _woo_line(item: dict[str, Any]) -> dict[str, Any]:
    subtotal, total = _decimal(item.get("subtotal")), _decimal(item.get("total"))
    discount = subtotal - total if subtotal is not None and total is not None else None
    return {
        "id": item.get("id"),
        "product_id": item.get("product_id"),
        "sku": item.get("sku"),
        "variant_id": _id_text(item.get("variation_id")),
        "variant_title": _woo_variant_title(item),
        "name": item.get("name"),
        "quantity": item.get("quantity"),
        "price": item.get("price"),
        "discount": _text(discount),
        "total": item.get("total"),
    }


def _woo_refund(refund: dict[str, Any], currency: Any) -> dict[str, Any]:
    """WooCommerce lists a refund in its order as ``{id, reason, total}``, the total
    negative (money out of the order): stored as the positive amount returned."""
    total = _decimal(refund.get("total"))
    return {
        "id": refund.get("id"),
        "amount": _text(abs(total)) if total is not None else refund.get("total"),
        "currency": currency,
        "reason": refund.get("reason"),
    }


def woocommerce_records(resource: str, body: dict[str, Any], deleted: bool) -> list[ShopRecord]:
    version = _woo_version(body)
    if deleted:
        table = {"order": "order", "customer": "customer", "product": "product"}.get(resource)
        return (
            [ShopRecord(table, {"id": body.get("id")}, version, Operation.DELETE)] if table else []
        )
    if resource == "customer":
        billing = body.get("billing") or {}
        return [
            *_company(billing.get("company"), version),
            _woo_contact(body, body.get("id"), version),
        ]
    if resource == "product":
        return [
            ShopRecord(
                "product",
                {
                    "id": body.get("id"),
                    "title": body.get("name"),
                    "sku": body.get("sku"),
                    "price": body.get("price"),
                    "status": body.get("status"),
                },
                version,
            )
        ]
    if resource != "order":
        return []
    return _woo_order(body, version)


def _woo_order(body: dict[str, Any], version: datetime | None) -> list[ShopRecord]:
    billing = body.get("billing") or {}
    records = _company(billing.get("company"), version)
    customer_id = body.get("customer_id")
    customer_key: Any = customer_id if customer_id not in (None, 0, "0") else None
    if customer_key is None:
        customer_key = guest_key(billing.get("email"))
    if customer_key is not None:
        # The order's billing details (an order has no top-level name or e-mail).
        records.append(_woo_contact(body, customer_key, version))
    status = body.get("status")
    records.append(
        ShopRecord(
            "order",
            {
                "id": body.get("id"),
                "number": body.get("number"),
                "status": status,
                "created_at": _utc_text(body.get("date_created_gmt")) or body.get("date_created"),
                "currency": body.get("currency"),
                "total": body.get("total"),
                "cancelled_at": version.isoformat() if status == "cancelled" and version else None,
                "customer": customer_key,
                "company": company_key(billing.get("company")),
                "line_items": [
                    _woo_line(item)
                    for item in body.get("line_items") or []
                    if isinstance(item, dict)
                ],
                **_child_table(
                    "refunds",
                    [
                        _woo_refund(refund, body.get("currency"))
                        for refund in body.get("refunds") or []
                        if isinstance(refund, dict)
                    ],
                ),
            },
            version,
        )
    )
    return records


_DELETE_VERBS = ("delete", "deleted", "redact")
ADAPTERS: dict[SourceKind, Callable[[str, dict[str, Any], bool], list[ShopRecord]]] = {
    SourceKind.SHOPIFY: shopify_records,
    SourceKind.WOOCOMMERCE: woocommerce_records,
}
"""Each shop kind's reshaping of its resources into mapping tables."""
assert set(ADAPTERS) == {
    kind for kind, spec in SOURCE_KINDS.items() if spec.body == "shop_resource"
}, "every kind whose body is a shop resource needs its adapter here"


def shop_records(event: RawEvent) -> list[ShopRecord]:
    """The records one shop webhook describes; an unknown topic yields none."""
    adapter = ADAPTERS[event.source_kind]
    deleted = event.operation is Operation.DELETE
    records = adapter(resource_of(event.source_kind, event.topic), event.payload, deleted)
    unique: dict[tuple[str, Any], ShopRecord] = {}
    for record in records:  # an order can name the same company twice (customer, billing)
        unique.setdefault((record.table, record.row.get("key", record.row.get("id"))), record)
    return list(unique.values())
