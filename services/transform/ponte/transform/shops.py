"""Shopify and WooCommerce webhook payloads, reshaped into rows the mapping engine reads.

Shops send whole resources in their public formats. The adapters here only *reshape*:
they pick the records a payload describes (an order describes the order, its customer,
and the customer's company when the billing address names one), flatten addresses, and
give each record its own version (the resource's ``updated_at`` / ``date_modified_gmt``).
Types, keys and references are then the mapping's business (``mappings/shopify.yaml``,
``mappings/woocommerce.yaml``), exactly as for an ERP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
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


def _shopify_customer(customer: dict[str, Any], fallback: datetime | None) -> list[ShopRecord]:
    version = _when(customer.get("updated_at")) or fallback
    address = customer.get("default_address") or {}
    records = _company(address.get("company") if isinstance(address, dict) else None, version)
    row = {
        "id": customer.get("id"),
        "name": _name(customer.get("first_name"), customer.get("last_name")),
        "email": customer.get("email"),
        "phone": customer.get("phone"),
        "company": company_key(address.get("company")) if isinstance(address, dict) else None,
        **_shopify_address(address),
    }
    return [*records, ShopRecord("customer", row, version)]


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
    if resource != "orders":
        return []
    records: list[ShopRecord] = []
    customer = body.get("customer")
    billing = body.get("billing_address") or {}
    if isinstance(customer, dict) and customer.get("id") is not None:
        records += _shopify_customer(customer, version)
    records += _company(billing.get("company") if isinstance(billing, dict) else None, version)
    records.append(
        ShopRecord(
            "order",
            {
                "id": body.get("id"),
                "name": body.get("name"),
                "created_at": body.get("created_at"),
                "currency": body.get("currency"),
                "total_price": body.get("total_price"),
                "financial_status": body.get("financial_status"),
                "cancelled_at": body.get("cancelled_at"),
                "customer": customer.get("id") if isinstance(customer, dict) else None,
                "company": company_key(billing.get("company"))
                if isinstance(billing, dict)
                else None,
                "line_items": [
                    {
                        "id": item.get("id"),
                        "product_id": item.get("product_id"),
                        "title": item.get("title"),
                        "quantity": item.get("quantity"),
                        "price": item.get("price"),
                    }
                    for item in body.get("line_items") or []
                    if isinstance(item, dict)
                ],
            },
            version,
        )
    )
    return records


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
            ShopRecord(
                "customer",
                {
                    "id": body.get("id"),
                    "name": _name(body.get("first_name"), body.get("last_name")),
                    "email": body.get("email"),
                    "phone": billing.get("phone"),
                    "company": company_key(billing.get("company")),
                    **_woo_address(billing),
                },
                version,
            ),
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
    billing = body.get("billing") or {}
    records = _company(billing.get("company"), version)
    customer_id = body.get("customer_id")
    customer_key: Any = customer_id if customer_id not in (None, 0, "0") else None
    if customer_key is None and billing.get("email"):
        customer_key = f"guest:{str(billing['email']).strip().lower()}"
    if customer_key is not None:
        records.append(
            ShopRecord(
                "customer",
                {
                    "id": customer_key,
                    "name": _name(billing.get("first_name"), billing.get("last_name")),
                    "email": billing.get("email"),
                    "phone": billing.get("phone"),
                    "company": company_key(billing.get("company")),
                    **_woo_address(billing),
                },
                version,
            )
        )
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
                    {
                        "id": item.get("id"),
                        "product_id": item.get("product_id"),
                        "name": item.get("name"),
                        "quantity": item.get("quantity"),
                        "price": item.get("price"),
                        "total": item.get("total"),
                    }
                    for item in body.get("line_items") or []
                    if isinstance(item, dict)
                ],
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
