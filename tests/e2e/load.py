"""Mixed webhook load for whole-system runs, and what its final state must be.

The load is what the field sends: ERP envelopes (companies, orders with nested items, code
references, orders before their company, Brazilian dates and decimals), Shopify and
WooCommerce order webhooks; every record in several versions, some sent out of order and
some sent twice (same webhook id, as a retrying sender does). ``Expected`` keeps the
newest *accepted* version of each record: the final state the system must reach.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ponte.shared.signatures import sign_body, sign_standard

ERP_SECRET = "chaos-erp-secret"
SHOP_SECRET = "chaos-shopify-secret"
WOO_SECRET = "chaos-woo-secret"
BASE = datetime(2024, 11, 14, 12, 0, tzinfo=UTC)


@dataclass
class Webhook:
    """One request as a sender makes it (re-sent unchanged on 5xx or a dropped connection)."""

    path: str
    body: bytes
    headers: dict[str, str]
    record: tuple[str, str, str]
    """(source, entity, key) of the record it carries."""
    version: int
    value: Decimal | str


def _erp(
    source: str, webhook_id: str, table: str, at: datetime, row: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "id": webhook_id,
            # Brazilian wall-clock time, as the ERPs write it.
            "occurred_at": (at - timedelta(hours=3)).strftime("%d/%m/%Y %H:%M:%S"),
            "table": table,
            "rows": [row],
        }
    ).encode()
    timestamp = int(time.time())
    return body, {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(ERP_SECRET, webhook_id, timestamp, body),
    }


def _brl(value: Decimal) -> str:
    """1234.5 -> '1.234,50' (the ERPs' format)."""
    whole, cents = f"{value:.2f}".split(".")
    groups = []
    while whole:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    return f"{'.'.join(groups)},{cents}"


def erp_company(source: str, n: int, version: int) -> Webhook:
    name = f"Empresa {n} v{version}"
    body, headers = _erp(
        source,
        f"emp-{n}-v{version}",
        "Empresa",
        BASE + timedelta(minutes=version, seconds=n),
        {"codigo": f"E{n}", "razao_social": name, "uf": "SP", "cnpj": None},
    )
    return Webhook(
        f"/webhooks/{source}", body, headers, (source, "company", f"E{n}"), version, name
    )


def erp_order(source: str, n: int, version: int, companies: int) -> Webhook:
    total = Decimal(n * 1000 + version)  # grows with the version: order is checkable
    row = {
        "codigo": f"P{n}",
        "empresa": f"E{n % companies}",
        "emissao": "14/11/2024",
        "total": _brl(total),
        "situacao": {"$code": {"tabela": "SIT_PEDIDO", "chave": "AP" if version < 3 else "FT"}},
        "Itens pedido": {
            "table": "Itens pedido",
            "rows": [
                {
                    "seq": seq,
                    "produto": f"SKU-{seq}",
                    "quantidade": "1",
                    "preco": "10,00",
                    "total": _brl(Decimal(seq * 10 + version)),
                }
                for seq in range(1, 2 + version % 2 + 1)  # 2 or 3 items: the set changes
            ],
        },
    }
    body, headers = _erp(
        source, f"ped-{n}-v{version}", "Pedido", BASE + timedelta(minutes=version, seconds=n), row
    )
    return Webhook(f"/webhooks/{source}", body, headers, (source, "order", f"P{n}"), version, total)


def shopify_order(source: str, n: int, version: int) -> Webhook:
    order_id = 5_000_000 + n
    total = Decimal(f"{n}.{version:02d}")
    body = json.dumps(
        {
            "id": order_id,
            "name": f"#{n}",
            "email": f"buyer{n}@example.com",
            "created_at": "2024-11-14T12:00:00-03:00",
            "updated_at": (BASE + timedelta(minutes=version)).isoformat(),
            "currency": "BRL",
            "total_price": str(total),
            "financial_status": "paid",
            "customer": {
                "id": 7_000_000 + n,
                "email": f"buyer{n}@example.com",
                "first_name": "Comprador",
                "last_name": str(n),
                "updated_at": "2024-11-10T09:00:00-03:00",
            },
            "line_items": [
                {
                    "id": order_id * 10 + 1,
                    "product_id": 42,
                    "sku": "SKU-1",
                    "title": "Produto",
                    "quantity": 1,
                    "price": str(total),
                }
            ],
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-shopify-topic": "orders/updated",
        "x-shopify-webhook-id": f"shop-{n}-v{version}",
        "x-shopify-hmac-sha256": sign_body(SHOP_SECRET, body),
    }
    return Webhook(
        f"/webhooks/{source}", body, headers, (source, "order", str(order_id)), version, total
    )


def woo_order(source: str, n: int, version: int) -> Webhook:
    total = Decimal(f"{n}.{version:02d}")
    body = json.dumps(
        {
            "id": 9000 + n,
            "number": str(9000 + n),
            "status": "processing" if version < 2 else "completed",
            "currency": "BRL",
            "date_created_gmt": "2024-11-14T15:00:00",
            "date_modified_gmt": (BASE + timedelta(minutes=version)).strftime("%Y-%m-%dT%H:%M:%S"),
            "total": str(total),
            "customer_id": 0,
            "billing": {
                "first_name": "Maria",
                "last_name": str(n),
                "email": f"m{n}@example.com",
                "city": "São Paulo",
                "state": "SP",
                "country": "BR",
            },
            "line_items": [
                {
                    "id": 90000 + n,
                    "name": "Item",
                    "product_id": 93,
                    "quantity": 1,
                    "price": str(total),
                    "total": str(total),
                    "sku": "W-1",
                }
            ],
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-wc-webhook-topic": "order.updated",
        "x-wc-webhook-delivery-id": f"woo-{n}-v{version}",
        "x-wc-webhook-signature": sign_body(WOO_SECRET, body),
    }
    return Webhook(
        f"/webhooks/{source}", body, headers, (source, "order", str(9000 + n)), version, total
    )


@dataclass
class Sources:
    erp: str
    shopify: str
    woo: str

    def config(self) -> list[dict[str, Any]]:
        return [
            {"id": self.erp, "kind": "erp", "secrets": [ERP_SECRET]},
            {"id": self.shopify, "kind": "shopify", "secrets": [SHOP_SECRET]},
            {"id": self.woo, "kind": "woocommerce", "secrets": [WOO_SECRET]},
        ]


def mixed_load(
    sources: Sources, *, companies: int, orders: int, shop_orders: int, seed: int = 7
) -> list[Webhook]:
    """Every version of every record, locally shuffled (older after newer happens), with
    about one in ten requests repeated later (a sender's retry of a delivered webhook)."""
    rng = random.Random(seed)
    load = [erp_company(sources.erp, n, v) for n in range(companies) for v in (1, 2, 3)]
    load += [erp_order(sources.erp, n, v, companies) for n in range(orders) for v in (1, 2, 3)]
    load += [shopify_order(sources.shopify, n, v) for n in range(shop_orders) for v in (1, 2)]
    load += [woo_order(sources.woo, n, v) for n in range(shop_orders) for v in (1, 2)]
    rng.shuffle(load)  # orders before their companies, version 3 before version 1...
    repeats = [rng.choice(load) for _ in range(len(load) // 10)]
    for webhook in repeats:
        load.insert(rng.randrange(len(load)), webhook)
    return load


@dataclass
class Expected:
    """The newest accepted version of every record, and what was answered how."""

    newest: dict[tuple[str, str, str], tuple[int, Decimal | str]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: int = 0
    accepted_ids: set[str] = field(default_factory=set)

    def was_accepted(self, webhook: Webhook) -> bool:
        """Answered 2xx before: a repeat may be answered 200 (a duplicate) at any time."""
        return _webhook_id(webhook) in self.accepted_ids

    def answered(self, webhook: Webhook, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.accepted += 1
            self.accepted_ids.add(_webhook_id(webhook))
            current = self.newest.get(webhook.record)
            if current is None or webhook.version > current[0]:
                self.newest[webhook.record] = (webhook.version, webhook.value)


def _webhook_id(webhook: Webhook) -> str:
    headers = webhook.headers
    return (
        headers.get("webhook-id")
        or headers.get("x-shopify-webhook-id")
        or headers.get("x-wc-webhook-delivery-id")
        or ""
    )
