"""``POST /webhooks/{source_id}`` against the real broker and PostgreSQL.

Each test drives the real ingest app over HTTP and checks both what the sender sees and
what landed: the raw topic's messages (key, headers, value) and the history row."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ponte.shared.settings import Settings
from ponte.shared.signatures import sign_body, sign_standard
from tests.conftest import (
    RunningIngest,
    event_of,
    read_topic,
    serve_ingest,
    unique_topic,
    write_sources,
)
from tests.eventually import eventually

pytestmark = pytest.mark.integration

ERP_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLWVycC1zb3VyY2UtYQ=="
ERP_OLD_SECRET = "old-secret-being-rotated-out"
SHOP_SECRET = "shpss_test_secret_value"
WOO_SECRET = "woo-test-secret-value"

SOURCES: list[dict[str, Any]] = [
    {
        "id": "wh-erp",
        "kind": "erp",
        "display_name": "ERP",
        "erp_name": "Sankhya",
        "erp_version": "4.2",
        "secrets": [ERP_SECRET, ERP_OLD_SECRET],
        "tables": ["Pedido", "Empresa", "Contato"],
    },
    {"id": "wh-shop", "kind": "shopify", "secrets": [SHOP_SECRET]},
    {"id": "wh-woo", "kind": "woocommerce", "secrets": [WOO_SECRET]},
    {"id": "wh-locked", "kind": "erp", "secrets": [ERP_SECRET], "allowed_cidrs": ["10.0.0.0/8"]},
    {
        "id": "wh-proxied",
        "kind": "erp",
        "secrets": [ERP_SECRET],
        "allowed_cidrs": ["203.0.113.0/24"],
        "trusted_proxies": ["127.0.0.1/32"],
    },
    {"id": "wh-off", "kind": "erp", "secrets": [ERP_SECRET], "active": False},
]


@pytest.fixture(scope="module")
async def ingest(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningIngest]:
    sources = write_sources(tmp_path_factory.mktemp("sources") / "sources.yaml", SOURCES)
    settings = base_settings.model_copy(
        update={
            "raw_topic": unique_topic(),
            "sources_file": sources,
            "max_body_bytes": 64 * 1024,
        }
    )
    async for running in serve_ingest(settings):
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def envelope(
    table: str = "Pedido", rows: list[dict[str, Any]] | None = None, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt-{uuid.uuid4().hex}",
        "occurred_at": "2024-11-14T12:01:32-03:00",
        "operation": "upsert",
        "table": table,
        "rows": rows or [{"codigo": "PED-1001", "empresa": "000123", "total": "1.234,56"}],
    }


def erp_headers(
    body: bytes,
    secret: str = ERP_SECRET,
    *,
    timestamp: int | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    webhook_id = f"msg_{uuid.uuid4().hex[:12]}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": content_type,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(secret, webhook_id, timestamp, body),
    }


async def history_row(
    pool: asyncpg.Pool, source_id: str, *, status: int, since: datetime, timeout_s: float = 5.0
) -> asyncpg.Record:
    """The history row of a source with that status received after ``since`` (rows are
    written asynchronously, in batches, so wait for it)."""
    row: asyncpg.Record = await eventually(
        lambda: pool.fetchrow(
            "SELECT * FROM webhook_requests WHERE source_id = $1 AND status_code = $2 "
            "AND received_at >= $3 ORDER BY id DESC LIMIT 1",
            source_id,
            status,
            since,
        ),
        satisfied=lambda found: found is not None,
        timeout_s=timeout_s,
        message=f"a history row for {source_id} with status {status}",
    )
    return row


async def test_signed_erp_delivery_becomes_one_message_per_record(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC)
    rows = [{"codigo": "PED-1", "total": "10,00"}, {"codigo": "PED-2", "total": "20,00"}]
    body = json.dumps(envelope(rows=rows)).encode()
    response = await client.post(ingest.webhook("wh-erp"), content=body, headers=erp_headers(body))

    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["records"] == 2 and answer["duplicate"] is False
    messages = await read_topic(
        ingest.settings.kafka_bootstrap, ingest.settings.raw_topic, expect=2
    )
    mine = [m for m in messages if event_of(m)["delivery_id"] == answer["event_id"]]
    assert sorted(m.key for m in mine) == [b"wh-erp/Pedido/PED-1", b"wh-erp/Pedido/PED-2"]
    headers = dict(mine[0].headers)
    assert headers["ponte-source"] == b"wh-erp"
    assert headers["ponte-kind"] == b"erp"
    assert headers["ponte-topic"] == b"Pedido"
    assert headers["content-type"] == b"application/json"
    assert b"ponte-received-at" in [name.encode() for name in headers]
    first = event_of(mine[0])
    assert first["payload"]["codigo"] in {"PED-1", "PED-2"}
    assert first["occurred_at"] == "2024-11-14T12:01:32-03:00"

    row = await history_row(pool, "wh-erp", status=202, since=since)
    assert row["outcome"] == "accepted" and row["event_id"] == answer["event_id"]
    assert row["tables"] == ["Pedido"] and row["body"] == body
    assert row["client_ip"] == "127.0.0.1" and row["size_bytes"] == len(body)


async def test_previous_secret_still_valid_during_rotation(
    ingest: RunningIngest, client: httpx.AsyncClient
) -> None:
    body = json.dumps(envelope()).encode()
    response = await client.post(
        ingest.webhook("wh-erp"), content=body, headers=erp_headers(body, ERP_OLD_SECRET)
    )
    assert response.status_code == 202, response.text


async def test_redelivery_is_flagged_duplicate_and_not_produced_twice(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC)
    event_id = f"evt-dup-{uuid.uuid4().hex}"
    body = json.dumps(envelope(event_id=event_id, rows=[{"codigo": f"DUP-{event_id}"}])).encode()
    first = await client.post(ingest.webhook("wh-erp"), content=body, headers=erp_headers(body))
    second = await client.post(ingest.webhook("wh-erp"), content=body, headers=erp_headers(body))

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"event_id": first.json()["event_id"], "duplicate": True}
    messages = await read_topic(
        ingest.settings.kafka_bootstrap, ingest.settings.raw_topic, expect=1
    )
    assert len([m for m in messages if event_of(m)["source_event_id"] == event_id]) == 1
    row = await history_row(pool, "wh-erp", status=200, since=since)
    assert row["outcome"] == "duplicate"


async def test_shopify_order_is_accepted_keyed_by_resource_and_id(
    ingest: RunningIngest, client: httpx.AsyncClient
) -> None:
    order = {
        "id": 820982911946154508,
        "email": "jon@example.com",
        "updated_at": "2024-11-14T12:01:32-05:00",
        "line_items": [{"id": 1, "sku": "P-9", "quantity": 2, "price": "617.28"}],
    }
    body = json.dumps(order).encode()
    headers = {
        "content-type": "application/json",
        "x-shopify-topic": "orders/updated",
        "x-shopify-webhook-id": f"b54557e4-{uuid.uuid4()}",
        "x-shopify-hmac-sha256": sign_body(SHOP_SECRET, body),
    }
    response = await client.post(ingest.webhook("wh-shop"), content=body, headers=headers)
    assert response.status_code == 202, response.text
    again = await client.post(ingest.webhook("wh-shop"), content=body, headers=headers)
    assert again.json()["duplicate"] is True

    messages = await read_topic(
        ingest.settings.kafka_bootstrap, ingest.settings.raw_topic, expect=1
    )
    mine = [m for m in messages if event_of(m)["delivery_id"] == response.json()["event_id"]]
    assert len(mine) == 1
    assert mine[0].key == b"wh-shop/orders/820982911946154508"
    event = event_of(mine[0])
    assert event["topic"] == "orders/updated" and event["operation"] == "upsert"
    assert event["occurred_at"] == "2024-11-14T12:01:32-05:00"


async def test_woocommerce_ping_and_delivery(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC)
    ping = await client.post(
        ingest.webhook("wh-woo"),
        content=b"webhook_id=17",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert ping.status_code == 200 and ping.json()["ping"] is True
    assert (await history_row(pool, "wh-woo", status=200, since=since))["outcome"] == "ping"

    body = json.dumps(
        {"id": 727, "status": "processing", "date_modified_gmt": "2024-11-14T15:01:32"}
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-wc-webhook-topic": "order.updated",
        "x-wc-webhook-resource": "order",
        "x-wc-webhook-delivery-id": "9f1c2",
        "x-wc-webhook-signature": sign_body(WOO_SECRET, body),
    }
    response = await client.post(ingest.webhook("wh-woo"), content=body, headers=headers)
    assert response.status_code == 202, response.text
    messages = await read_topic(
        ingest.settings.kafka_bootstrap, ingest.settings.raw_topic, expect=1
    )
    mine = [m for m in messages if event_of(m)["delivery_id"] == response.json()["event_id"]]
    assert mine[0].key == b"wh-woo/order/727"
    assert event_of(mine[0])["occurred_at"] == "2024-11-14T15:01:32Z"


async def test_latin1_body_is_decoded_by_declared_charset(
    ingest: RunningIngest, client: httpx.AsyncClient
) -> None:
    document = envelope(
        table="Empresa", rows=[{"codigo": "000123", "razao_social": "Comércio São João Ltda"}]
    )
    body = json.dumps(document, ensure_ascii=False).encode("latin-1")
    response = await client.post(
        ingest.webhook("wh-erp"),
        content=body,
        headers=erp_headers(body, content_type="application/json; charset=ISO-8859-1"),
    )
    assert response.status_code == 202, response.text
    messages = await read_topic(
        ingest.settings.kafka_bootstrap, ingest.settings.raw_topic, expect=1
    )
    mine = [m for m in messages if event_of(m)["delivery_id"] == response.json()["event_id"]]
    assert event_of(mine[0])["payload"]["razao_social"] == "Comércio São João Ltda"


def _erp(body: dict[str, Any] | bytes, **kwargs: Any) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw, erp_headers(raw, **kwargs)


@pytest.mark.parametrize(
    ("source_id", "make", "status", "code", "mentions"),
    [
        ("wh-nope", lambda: _erp(envelope()), 404, "unknown_source", "wh-nope"),
        ("wh-off", lambda: _erp(envelope()), 404, "unknown_source", "inactive"),
        (
            "wh-erp",
            lambda: (json.dumps(envelope()).encode(), {"content-type": "application/json"}),
            401,
            "bad_signature",
            "webhook-id",
        ),
        (
            "wh-erp",
            lambda: _erp(envelope(), secret="whsec_d3Jvbmc="),
            401,
            "bad_signature",
            "webhook-signature",
        ),
        (
            "wh-erp",
            lambda: _erp(envelope(), timestamp=int(time.time()) - 3600),
            401,
            "bad_signature",
            "tolerance",
        ),
        ("wh-locked", lambda: _erp(envelope()), 403, "ip_not_allowed", "127.0.0.1"),
        ("wh-erp", lambda: _erp(envelope(table="Fatura")), 403, "table_not_allowed", "Fatura"),
        ("wh-erp", lambda: _erp(b'{"id": "x", '), 400, "invalid_json", "line 1"),
        ("wh-erp", lambda: _erp({**envelope(), "rows": []}), 422, "invalid_envelope", "rows"),
        (
            "wh-erp",
            lambda: _erp({**envelope(), "occurred_at": "ontem"}),
            422,
            "invalid_envelope",
            "occurred_at",
        ),
        (
            "wh-erp",
            lambda: _erp(envelope(rows=[{"codigo": "x" * 70_000}])),
            413,
            "body_too_large",
            "65536",
        ),
        (
            "wh-erp",
            lambda: _erp(b'{"id": "deep", "rows": [' + b"[" * 5000 + b"]" * 5000 + b"]}"),
            422,
            "too_deep",
            "deeper than 64 levels",
        ),
        (
            "wh-erp",
            lambda: _erp(
                json.dumps(envelope()).encode(), content_type="application/json; charset=klingon"
            ),
            415,
            "unknown_charset",
            "klingon",
        ),
        ("wh-erp", lambda: _erp(b'{"id": "\xff\xfe"}'), 400, "bad_encoding", ""),
    ],
    ids=[
        "unknown",
        "inactive",
        "unsigned",
        "wrong-secret",
        "replay",
        "ip",
        "table",
        "json",
        "empty-rows",
        "bad-date",
        "too-large",
        "deeply-nested",
        "unknown-charset",
        "not-utf8",
    ],
)
async def test_rejections_name_the_reason_and_are_recorded(
    ingest: RunningIngest,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    source_id: str,
    make: Any,
    status: int,
    code: str,
    mentions: str,
) -> None:
    since = datetime.now(UTC)
    body, headers = make()
    response = await client.post(ingest.webhook(source_id), content=body, headers=headers)

    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["error"] == code
    assert mentions in problem["message"]
    row = await history_row(pool, source_id, status=status, since=since)
    assert row["reason"] == code and row["outcome"] == "rejected"
    assert row["response_body"] == problem


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    ingest: RunningIngest, client: httpx.AsyncClient
) -> None:
    body, headers = _erp(envelope())
    # wh-proxied trusts 127.0.0.1 as a proxy: the forwarded client address is checked.
    allowed = await client.post(
        ingest.webhook("wh-proxied"),
        content=body,
        headers={**headers, "x-forwarded-for": "203.0.113.7"},
    )
    assert allowed.status_code == 202, allowed.text
    # wh-locked trusts no proxy: a forged header does not get past its allowlist.
    body, headers = _erp(envelope())
    spoofed = await client.post(
        ingest.webhook("wh-locked"),
        content=body,
        headers={**headers, "x-forwarded-for": "10.1.2.3"},
    )
    assert spoofed.status_code == 403
    assert "127.0.0.1" in spoofed.json()["message"]


async def test_metrics_and_probes(ingest: RunningIngest, client: httpx.AsyncClient) -> None:
    body, headers = _erp(envelope())
    await client.post(ingest.webhook("wh-erp"), content=body, headers=headers)
    metrics = (await client.get(f"{ingest.url}/metrics")).text
    assert 'ponte_ingest_requests_total{outcome="accepted",source="wh-erp",status="202"}' in metrics
    assert "ponte_kafka_produce_seconds_bucket" in metrics
    assert 'ponte_ingest_last_accepted_timestamp_seconds{source="wh-erp"}' in metrics
    assert (await client.get(f"{ingest.url}/healthz")).status_code == 200
    ready = await client.get(f"{ingest.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["broker"] is True


async def test_secrets_and_signatures_never_reach_the_logs(
    ingest: RunningIngest, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body, headers = _erp(envelope())
    bad = {**headers, "webhook-signature": "v1,Zm9yZ2VkLXNpZ25hdHVyZQ=="}
    await client.post(ingest.webhook("wh-erp"), content=body, headers=bad)
    await client.post(ingest.webhook("wh-erp"), content=body, headers=headers)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (
        ERP_SECRET,
        ERP_OLD_SECRET,
        SHOP_SECRET,
        WOO_SECRET,
        headers["webhook-signature"],
        "Zm9yZ2VkLXNpZ25hdHVyZQ==",
    ):
        assert secret not in text
    assert "webhook rejected" in text  # the rejection itself was logged


def test_sources_file_fixture_is_valid(tmp_path: Path) -> None:
    from ponte.shared.sources import load_sources_file

    configs = load_sources_file(write_sources(tmp_path / "s.yaml", SOURCES))
    assert [c.id for c in configs] == [s["id"] for s in SOURCES]


async def test_forged_forwarded_line_before_the_proxy_line_does_not_pass(
    ingest: RunningIngest, client: httpx.AsyncClient
) -> None:
    """A proxy that appends its own X-Forwarded-For line leaves the client's forged line
    first; the whole chain is read from the right."""
    body, headers = _erp(envelope())
    lines = [
        *headers.items(),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-for", "198.51.100.9"),
    ]
    response = await client.post(ingest.webhook("wh-proxied"), content=body, headers=lines)
    assert response.status_code == 403
    assert "198.51.100.9" in response.json()["message"]


async def test_nul_in_the_path_does_not_stop_the_history(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC)
    await client.post(f"{ingest.url}/webhooks/a%00b", content=b"{}")
    body, headers = _erp(envelope())
    accepted = await client.post(ingest.webhook("wh-erp"), content=body, headers=headers)
    assert accepted.status_code == 202
    row = await history_row(pool, "wh-erp", status=202, since=since)
    assert row["event_id"] == accepted.json()["event_id"]
