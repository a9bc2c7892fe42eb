"""Sample webhooks, signed, for trying Ponte by hand (``ponte sign``, ``ponte dev``) and
for benchmarks: an ERP order in the "table of tables" envelope, a Shopify order and a
WooCommerce order, each with the headers its kind's sender puts on it
(``ponte.shared.source_kinds``), printed as a ready-to-paste curl.

Every call makes a fresh delivery (a new envelope id or delivery id, and a new version of
the record) unless told to repeat one: ingest answers a repeated delivery as a duplicate,
so a sample sent twice under one id would never be seen arriving a second time.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, assert_never

from ponte.shared.signatures import (
    SHOPIFY_SIGNATURE,
    STANDARD_ID,
    STANDARD_SIGNATURE,
    STANDARD_TIMESTAMP,
    WOOCOMMERCE_SIGNATURE,
    sign_body,
    sign_standard,
)
from ponte.shared.source_kinds import SourceKind, spec_of

EXAMPLE_ENVELOPE: dict[str, Any] = {
    "id": "evt-2024-11-14-000184",
    "occurred_at": "2024-11-14T12:01:32-03:00",
    "operation": "upsert",
    "table": "Pedido",
    "rows": [
        {
            "codigo": "PED-1001",
            "empresa": "000123",
            "vendedor": "V07",
            "emissao": "14/11/2024",
            "total": "1.234,56",
            "situacao": {"$code": {"tabela": "SIT_PEDIDO", "chave": "AP"}},
            "Itens pedido": {
                "table": "Itens pedido",
                "rows": [{"seq": 1, "produto": "P-9", "quantidade": "2", "preco": "617,28"}],
            },
        }
    ],
}

SHOPIFY_ORDER: dict[str, Any] = {
    "id": 820982911946154508,
    "name": "#9999",
    "email": "jon@example.com",
    "created_at": "2024-11-14T12:01:32-05:00",
    "updated_at": "2024-11-14T12:05:00-05:00",
    "currency": "BRL",
    "total_price": "1234.56",
    "financial_status": "paid",
    "customer": {
        "id": 115310627314723954,
        "email": "john@example.com",
        "first_name": "John",
        "last_name": "Smith",
        "updated_at": "2024-11-10T09:00:00-05:00",
    },
    "line_items": [
        {"id": 866550311766439020, "product_id": 632910392, "variant_id": 808950810,
         "sku": "IPOD2008PINK", "title": "IPod Nano - 8GB", "quantity": 1, "price": "199.00"},
    ],
}  # fmt: skip

WOOCOMMERCE_ORDER: dict[str, Any] = {
    "id": 727,
    "number": "727",
    "status": "processing",
    "currency": "BRL",
    "date_created_gmt": "2024-11-14T15:01:32",
    "date_modified_gmt": "2024-11-15T10:00:00",
    "total": "29.35",
    "customer_id": 0,
    "billing": {"first_name": "Maria", "last_name": "Souza", "email": "maria@example.com",
                "city": "São Paulo", "state": "SP", "country": "BR"},
    "line_items": [{"id": 315, "name": "Woo Single #1", "product_id": 93, "quantity": 2,
                    "price": 3, "total": "6.00", "sku": ""}],
}  # fmt: skip


@dataclass
class SignedRequest:
    url: str
    headers: dict[str, str]
    body: bytes

    def curl(self) -> str:
        """A ready-to-paste curl (the signature's clock starts now: Standard Webhooks
        signatures are valid for the tolerance, 5 minutes by default)."""
        quoted = self.body.decode().replace("'", "'\\''")
        lines = [f"curl -sS -X POST '{self.url}'"]
        lines += [f"  -H '{name}: {value}'" for name, value in self.headers.items()]
        lines.append(f"  --data-binary '{quoted}'")
        return " \\\n".join(lines)


def example_order(event_id: str | None = None) -> bytes:
    """``EXAMPLE_ENVELOPE`` as a request body, under a fresh envelope id unless one is
    given, and a fresh ``occurred_at`` (a new version of the order)."""
    envelope: dict[str, Any] = copy.deepcopy(EXAMPLE_ENVELOPE)
    envelope["id"] = event_id or f"evt-sample-{int(time.time())}-{secrets.token_hex(4)}"
    envelope["occurred_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return json.dumps(envelope, ensure_ascii=False).encode()


def _shop_order(template: dict[str, Any], version_field: str) -> bytes:
    order = copy.deepcopy(template)
    now = datetime.now(UTC)
    order[version_field] = (
        now.isoformat(timespec="seconds")
        if version_field == "updated_at"
        else now.replace(tzinfo=None).isoformat(timespec="seconds")
    )
    return json.dumps(order, ensure_ascii=False).encode()


def sample_request(
    kind: SourceKind,
    url: str,
    secret: str,
    *,
    body: bytes | None = None,
    delivery_id: str | None = None,
) -> SignedRequest:
    """A signed sample for a source of ``kind`` (``body`` replaces the sample's)."""
    spec = spec_of(kind)
    delivery = delivery_id or f"msg_{secrets.token_hex(8)}"
    headers = {"content-type": "application/json"}
    scheme = spec.signature
    match scheme:
        case "standard_webhooks":
            payload = body if body is not None else example_order(delivery_id)
            timestamp = int(time.time())
            headers[STANDARD_ID] = delivery
            headers[STANDARD_TIMESTAMP] = str(timestamp)
            headers[STANDARD_SIGNATURE] = sign_standard(secret, delivery, timestamp, payload)
        case "shopify_hmac":
            payload = body if body is not None else _shop_order(SHOPIFY_ORDER, "updated_at")
            assert spec.topic_header is not None
            headers[spec.topic_header] = "orders/updated"
            headers[spec.delivery_id_headers[0]] = delivery
            headers[SHOPIFY_SIGNATURE] = sign_body(secret, payload)
        case "woocommerce_hmac":
            payload = (
                body if body is not None else _shop_order(WOOCOMMERCE_ORDER, "date_modified_gmt")
            )
            assert spec.topic_header is not None
            headers[spec.topic_header] = "order.updated"
            headers[spec.delivery_id_headers[0]] = delivery
            headers[WOOCOMMERCE_SIGNATURE] = sign_body(secret, payload)
        case _:
            assert_never(scheme)
    return SignedRequest(url, headers, payload)


def signed_curl(url: str, secret: str, body: bytes, webhook_id: str | None = None) -> str:
    """A curl for an ERP source (Standard Webhooks headers)."""
    return sample_request(SourceKind.ERP, url, secret, body=body, delivery_id=webhook_id).curl()
