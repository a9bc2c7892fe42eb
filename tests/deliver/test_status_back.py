"""Status back to the origin, end to end: HubSpot's signed webhook into the real deliver app
over real HTTP, the real broker and PostgreSQL, and out to the Shopify and WooCommerce
stand-ins (and an ERP endpoint) over real HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import yaml
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY

from ponte.deliver.app import create_app
from ponte.deliver.status_back.signature import (
    SignatureRejected,
    hubspot_uri,
    sign_hubspot_v3,
    verify_hubspot_v3,
)
from ponte.shared import kafka
from ponte.shared.embedded import EmbeddedBroker
from ponte.shared.replay.run import replay
from ponte.shared.replay.selection import Selection
from ponte.shared.settings import Settings
from ponte.shared.signatures import verify_standard
from tests.conftest import read_topic, unique_topic
from tests.eventually import eventually
from tests.stand_ins.serve import serve
from tests.stand_ins.shop_apis import (
    ShopState,
    create_shopify_stand_in,
    create_woocommerce_stand_in,
)

pytestmark = pytest.mark.integration

CLIENT_SECRET = "hubspot-client-secret-for-tests"
PUBLIC_BASE_URL = "https://ponte.example.com"
SHOPIFY_TOKEN = "shpat_stand_in_token"
WOO_KEY, WOO_SECRET = "ck_stand_in", "cs_stand_in"
ERP_SECRET = "erp-status-secret"


@dataclass
class ErpState:
    received: list[tuple[str, dict[str, str], bytes]]


def create_erp_endpoint(state: ErpState) -> FastAPI:
    """A minimal ERP endpoint that records what it was sent (the ERP's side is whatever
    the customer built; this one only needs to receive)."""
    app = FastAPI(title="ERP endpoint (test recorder)")

    @app.put("/api/pedidos/{key}/situacao")
    async def situacao(key: str, request: Request) -> dict[str, str]:
        state.received.append((key, dict(request.headers), await request.body()))
        return {"ok": key}

    return app


@dataclass
class Stack:
    url: str
    target: str
    settings: Settings
    shopify: ShopState
    woo: ShopState
    erp: ErpState
    sources: dict[str, str]
    """kind -> source id."""

    def webhook_url(self) -> str:
        return f"{self.url}/crm-webhooks/hubspot/{self.target}"


def counted(target: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "ponte_status_back_events_total", {"target": target, "outcome": outcome}
    )
    return value or 0.0


def write_config(path: Path, target: str, urls: dict[str, str], sources: dict[str, str]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "targets": [],
                "crm_webhooks": [
                    {
                        "target": target,
                        "client_secret": "${TEST_HUBSPOT_CLIENT_SECRET}",
                        "public_base_url": PUBLIC_BASE_URL,
                    }
                ],
                "origins": [
                    {
                        "source": sources["shopify"],
                        "kind": "shopify",
                        "base_url": urls["shopify"],
                        "access_token": "${TEST_SHOPIFY_TOKEN}",
                        "stages": {"closedwon": "close", "closedlost": "cancel"},
                    },
                    {
                        "source": sources["woocommerce"],
                        "kind": "woocommerce",
                        "base_url": urls["woocommerce"],
                        "consumer_key": "${TEST_WOO_KEY}",
                        "consumer_secret": "${TEST_WOO_SECRET}",
                        # "archived" is no WooCommerce status: the shop refuses it (400).
                        "stages": {"closedwon": "completed", "contractsent": "archived"},
                    },
                    {
                        "source": sources["erp"],
                        "kind": "erp",
                        "base_url": urls["erp"],
                        "method": "PUT",
                        "path": "/api/pedidos/{source_key}/situacao",
                        "body": {"situacao": "{status}", "negocio": "{crm_id}"},
                        "signing_secret": "${TEST_ERP_SECRET}",
                        "stages": {"closedwon": "FAT"},
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def status_stack(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    monkeypatch.setenv("TEST_HUBSPOT_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TEST_SHOPIFY_TOKEN", SHOPIFY_TOKEN)
    monkeypatch.setenv("TEST_WOO_KEY", WOO_KEY)
    monkeypatch.setenv("TEST_WOO_SECRET", WOO_SECRET)
    monkeypatch.setenv("TEST_ERP_SECRET", ERP_SECRET)
    suffix = uuid.uuid4().hex[:8]
    target = f"hs-{suffix}"
    sources = {kind: f"{kind[:4]}-{suffix}" for kind in ("shopify", "woocommerce", "erp")}
    shopify, woo, erp = ShopState(), ShopState(), ErpState([])
    async with (
        serve(create_shopify_stand_in(shopify, SHOPIFY_TOKEN)) as shopify_url,
        serve(create_woocommerce_stand_in(woo, WOO_KEY, WOO_SECRET)) as woo_url,
        serve(create_erp_endpoint(erp)) as erp_url,
    ):
        urls = {"shopify": shopify_url, "woocommerce": woo_url, "erp": erp_url}
        config = write_config(tmp_path / "targets.yaml", target, urls, sources)
        configured = settings.model_copy(
            update={
                "targets_file": config,
                "status_topic": unique_topic("ponte.status"),
                "status_dead_letter_topic": unique_topic("ponte.status.dlq"),
                "status_group_id": unique_topic("status-back"),
                "deliver_max_attempts": 6,
                "deliver_max_age_s": 30.0,
                "deliver_timeout_s": 5.0,
            }
        )
        await kafka.ensure_topics(configured)
        async with serve(create_app(configured)) as url:
            yield Stack(url, target, configured, shopify, woo, erp, sources)


async def delivered(
    pool: asyncpg.Pool, stack: Stack, kind: str, source_key: str, crm_id: str
) -> None:
    """The deliveries row the deliver engine writes once a record reached HubSpot."""
    await pool.execute(
        "INSERT INTO deliveries (target_id, entity, source_id, source_key, row_id, crm_id, "
        "state, attempts, updated_at) VALUES ($1, 'order', $2, $3, 1, $4, 'delivered', 1, now())",
        stack.target,
        stack.sources[kind],
        source_key,
        crm_id,
    )


def stage_event(
    crm_id: str, stage: str, event_id: int, occurred_at_ms: int | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 4242,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": occurred_at_ms or int(time.time() * 1000),
        "subscriptionType": "deal.propertyChange",
        "attemptNumber": 0,
        "objectId": int(crm_id),
        "propertyName": "dealstage",
        "propertyValue": stage,
        "changeSource": "CRM_UI",
        **extra,
    }


def signed_headers(
    url: str, body: bytes, *, secret: str = CLIENT_SECRET, timestamp_ms: int | None = None
) -> dict[str, str]:
    """What HubSpot sends: the URI signed is the public one it called."""
    timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    public = PUBLIC_BASE_URL + httpx.URL(url).raw_path.decode()
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_hubspot_v3(secret, "POST", public, body, timestamp),
        "X-HubSpot-Request-Timestamp": timestamp,
        "X-HubSpot-Signature-Version": "v3",
    }


async def post_events(stack: Stack, events: list[dict[str, Any]], **sign: Any) -> httpx.Response:
    body = orjson.dumps(events)
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.post(
            stack.webhook_url(),
            content=body,
            headers=signed_headers(stack.webhook_url(), body, **sign),
        )


async def states(pool: asyncpg.Pool, stack: Stack) -> dict[str, tuple[str, str | None]]:
    rows = await pool.fetch(
        "SELECT event_id, state, reason FROM status_updates WHERE target_id = $1", stack.target
    )
    return {row["event_id"]: (row["state"], row["reason"]) for row in rows}


# --- the signature, on its own ------------------------------------------------------------


def test_hubspot_uri_decodes_only_the_listed_escapes() -> None:
    assert (
        hubspot_uri("https://h.example/p%3Fq?a=%3a%2F%40%21%24%27%28%29%2a%2C%3B&b=%20%26")
        == "https://h.example/p?q?a=:/@!$'()*,;&b=%20%26"
    )


def test_signature_covers_method_uri_body_and_timestamp() -> None:
    now = time.time()
    timestamp = str(int(now * 1000))
    uri, body = "https://ponte.example.com/crm-webhooks/hubspot/t", b'[{"eventId":1}]'
    good = {
        "x-hubspot-signature-v3": sign_hubspot_v3("s", "POST", uri, body, timestamp),
        "x-hubspot-request-timestamp": timestamp,
    }
    verify_hubspot_v3(good, "POST", uri, body, "s", now=now)
    for method, other_uri, other_body, secret in [
        ("PUT", uri, body, "s"),
        ("POST", uri + "x", body, "s"),
        ("POST", uri, body + b" ", "s"),
        ("POST", uri, body, "t"),
    ]:
        with pytest.raises(SignatureRejected, match="does not match"):
            verify_hubspot_v3(good, method, other_uri, other_body, secret, now=now)
    with pytest.raises(SignatureRejected, match="old"):
        verify_hubspot_v3(good, "POST", uri, body, "s", now=now + 301)


# --- end to end ---------------------------------------------------------------------------


async def test_stage_change_reaches_each_origin_exactly_once_despite_hubspot_retries(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    stack = status_stack
    await delivered(pool, stack, "shopify", "5001", "9001")
    await delivered(pool, stack, "woocommerce", "7001", "9002")
    await delivered(pool, stack, "erp", "PED-1001", "9003")
    stack.shopify.add_order("5001", closed_at=None)
    stack.woo.add_order("7001", status="processing")
    batch = [
        stage_event("9001", "closedwon", 11),
        stage_event("9002", "closedwon", 12),
        stage_event("9003", "closedwon", 13),
    ]
    first = await post_events(stack, batch)
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 3}
    # HubSpot did not see the answer in time and re-sends the batch (attemptNumber 1).
    again = await post_events(stack, [{**event, "attemptNumber": 1} for event in batch])
    assert again.status_code == 200, again.text

    def handled() -> float:  # six events read, whatever became of them
        return counted(stack.target, "duplicate") + counted(stack.target, "applied")

    await eventually(handled, satisfied=lambda n: n >= 6, timeout_s=30, message="6 events handled")
    assert counted(stack.target, "duplicate") == 3
    assert stack.shopify.applied == [("5001", "close")]
    assert stack.woo.applied == [("7001", "completed")]
    assert [call[2] for call in stack.shopify.calls + stack.woo.calls] == [200, 200]
    assert stack.woo.orders["7001"]["status"] == "completed"
    assert stack.shopify.orders["5001"]["closed_at"] is not None
    assert {k: v[0] for k, v in (await states(pool, stack)).items()} == {
        "11": "applied",
        "12": "applied",
        "13": "applied",
    }
    # The ERP got its templated call once, signed the way Ponte checks the ERP's webhooks.
    ((key, headers, body),) = stack.erp.received
    assert key == "PED-1001"
    assert orjson.loads(body) == {"situacao": "FAT", "negocio": "9003"}
    assert verify_standard(headers, body, [ERP_SECRET], tolerance_s=300) == f"{stack.target}-13"


async def test_forged_or_replayed_webhooks_are_refused_and_nothing_is_produced(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    stack = status_stack
    await delivered(pool, stack, "shopify", "5002", "9011")
    stack.shopify.add_order("5002", closed_at=None)
    events = [stage_event("9011", "closedwon", 21)]
    body = orjson.dumps(events)
    url = stack.webhook_url()
    async with httpx.AsyncClient(timeout=15) as client:
        forged = await client.post(
            url, content=body, headers=signed_headers(url, body, secret="not-the-secret")
        )
        assert forged.status_code == 401
        assert forged.json()["error"] == "bad_signature"
        tampered = await client.post(
            url,
            content=body.replace(b"closedwon", b"closedlost"),
            headers=signed_headers(url, body),
        )
        assert tampered.status_code == 401
        old_ms = int((time.time() - 6 * 60) * 1000)
        old = await client.post(
            url, content=body, headers=signed_headers(url, body, timestamp_ms=old_ms)
        )
        assert old.status_code == 401 and "old" in old.json()["message"]
        # Signed over the URL Ponte sees rather than the public one HubSpot calls.
        timestamp = str(int(time.time() * 1000))
        local = await client.post(
            url,
            content=body,
            headers={
                "X-HubSpot-Signature-v3": sign_hubspot_v3(
                    CLIENT_SECRET, "POST", url, body, timestamp
                ),
                "X-HubSpot-Request-Timestamp": timestamp,
            },
        )
        assert local.status_code == 401
        unsigned = await client.post(url, content=body)
        assert unsigned.status_code == 401
        unknown = await client.post(
            f"{stack.url}/crm-webhooks/hubspot/no-such-target",
            content=body,
            headers=signed_headers(url, body),
        )
        assert unknown.status_code == 404
    produced = await read_topic(
        stack.settings.kafka_bootstrap, stack.settings.status_topic, expect=0, timeout_s=1.5
    )
    assert produced == []
    assert stack.shopify.calls == []
    # The real thing, for contrast: accepted, and the shop is called.
    assert (await post_events(stack, events)).status_code == 200
    await eventually(
        lambda: stack.shopify.applied, timeout_s=30, message="the stage applied on Shopify"
    )


async def test_a_5xx_storm_on_the_shop_is_retried_through(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    stack = status_stack
    await delivered(pool, stack, "shopify", "5003", "9021")
    await delivered(pool, stack, "woocommerce", "7003", "9022")
    stack.shopify.add_order("5003", closed_at=None)
    stack.woo.add_order("7003", status="processing")
    stack.shopify.fail_next = [503, 502, 429, 500]
    stack.woo.fail_next = [500, 503]
    response = await post_events(
        stack, [stage_event("9021", "closedwon", 31), stage_event("9022", "closedwon", 32)]
    )
    assert response.status_code == 200, response.text

    def both_applied() -> bool:
        return len(stack.shopify.applied) == 1 and len(stack.woo.applied) == 1

    await eventually(
        both_applied, timeout_s=45, message="the stage applied once on Shopify and on Woo"
    )
    assert [status for _, _, status in stack.shopify.calls] == [503, 502, 429, 500, 200]
    assert [status for _, _, status in stack.woo.calls] == [500, 503, 200]
    attempts = await pool.fetch(
        "SELECT event_id, attempts, state FROM status_updates WHERE target_id = $1 "
        "ORDER BY event_id",
        stack.target,
    )
    assert [(r["event_id"], r["attempts"], r["state"]) for r in attempts] == [
        ("31", 5, "applied"),
        ("32", 3, "applied"),
    ]
    dead = await read_topic(
        stack.settings.kafka_bootstrap,
        stack.settings.status_dead_letter_topic,
        expect=0,
        timeout_s=1,
    )
    assert dead == []


async def test_refusals_dead_letter_at_once_with_their_reason(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    stack = status_stack
    await delivered(pool, stack, "shopify", "5404", "9031")  # the shop no longer has it
    await delivered(pool, stack, "shopify", "5422", "9032")
    await delivered(pool, stack, "woocommerce", "7400", "9033")
    stack.shopify.add_order("5422", closed_at="2024-11-14T12:00:00+00:00")  # cannot cancel
    stack.woo.add_order("7400", status="processing")
    response = await post_events(
        stack,
        [
            stage_event("9031", "closedwon", 41),
            stage_event("9032", "closedlost", 42),
            stage_event("9033", "contractsent", 43),
        ],
    )
    assert response.status_code == 200, response.text
    dead = await read_topic(
        stack.settings.kafka_bootstrap, stack.settings.status_dead_letter_topic, expect=3
    )
    assert len(dead) == 3
    by_key = {message.key.decode(): message for message in dead if message.key}
    expected = {
        f"{stack.sources['shopify']}/order/5404": ("404", "Not Found"),
        f"{stack.sources['shopify']}/order/5422": ("422", "Order is closed"),
        f"{stack.sources['woocommerce']}/order/7400": ("400", "rest_invalid_param"),
    }
    assert set(by_key) == set(expected)
    for key, (status, excerpt) in expected.items():
        headers = {k: v.decode() for k, v in by_key[key].headers}
        assert headers["ponte-dlq-status"] == status
        assert headers["ponte-dlq-reason"].startswith(f"refused: refused with {status}")
        assert excerpt in headers["ponte-dlq-response"]
        assert headers["ponte-dlq-attempts"] == "1"  # a refusal is not retried
        assert headers["ponte-target"] == stack.target
        assert headers["ponte-original-topic"] == stack.settings.status_topic
        assert headers["ponte-entity"] == "order"
        value = orjson.loads(by_key[key].value or b"")
        assert value["event"]["objectId"] in (9031, 9032, 9033)
    await until_recorded(pool, stack, 3)
    assert {v[0] for v in (await states(pool, stack)).values()} == {"failed"}
    assert stack.shopify.applied == [] and stack.woo.applied == []


async def test_a_refused_update_is_replayed_once_the_origin_is_fixed(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    """``ponte replay --stage status``: the failed event goes back onto the status topic,
    is applied once the origin has the order, and a second replay changes nothing. A
    HubSpot re-send of the failed event stays a duplicate: only a replay retries it."""
    stack = status_stack
    settings = stack.settings
    await delivered(pool, stack, "shopify", "5404", "9041")  # the shop lacks it: 404
    event = stage_event("9041", "closedwon", 51)
    assert (await post_events(stack, [event])).status_code == 200
    await read_topic(settings.kafka_bootstrap, settings.status_dead_letter_topic, expect=1)
    await until_recorded(pool, stack, 1)

    only_status = Selection(stages=("status",), target_id=stack.target)
    (item,) = (await replay(settings, only_status)).items
    assert item.key == f"{stack.sources['shopify']}/order/5404" and item.event_id == "51"
    assert item.not_replayable is None and "404" in item.reason and item.table == "order"
    assert len(await read_topic(settings.kafka_bootstrap, settings.status_topic, expect=1)) == 1
    assert (await post_events(stack, [{**event, "attemptNumber": 1}])).status_code == 200
    await eventually(
        lambda: counted(stack.target, "duplicate"),
        satisfied=lambda n: n >= 1,
        timeout_s=30,
        message="HubSpot's re-send read as a duplicate",
    )
    assert [status for _, _, status in stack.shopify.calls] == [404]

    stack.shopify.add_order("5404", closed_at=None)  # the fix
    assert (await replay(settings, only_status, dry_run=False)).messages == 1
    await eventually(
        lambda: states(pool, stack),
        satisfied=lambda rows: rows["51"][0] == "applied",
        timeout_s=30,
        message="the replayed event applied",
    )
    assert stack.shopify.applied == [("5404", "close")]
    duplicates = counted(stack.target, "duplicate")
    await replay(settings, only_status, dry_run=False)
    await eventually(
        lambda: counted(stack.target, "duplicate"),
        satisfied=lambda n: n >= duplicates + 1,
        timeout_s=30,
        message="the second replay read as a duplicate",
    )
    assert stack.shopify.applied == [("5404", "close")]
    assert [status for _, _, status in stack.shopify.calls] == [404, 200]


async def until_recorded(pool: asyncpg.Pool, stack: Stack, count: int) -> None:
    """Wait until ``count`` events of the stack's target have a status_updates row."""
    await eventually(
        lambda: states(pool, stack),
        satisfied=lambda rows: len(rows) >= count,
        timeout_s=30,
        message=f"{count} events recorded in status_updates",
    )


async def test_unmapped_stages_and_unknown_deals_are_ignored_and_counted(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    stack = status_stack
    await delivered(pool, stack, "shopify", "5005", "9041")
    stack.shopify.add_order("5005", closed_at=None)
    response = await post_events(
        stack,
        [
            stage_event("9041", "appointmentscheduled", 51),  # no mapping for this stage
            stage_event("9049", "closedwon", 52),  # a deal Ponte never delivered
            stage_event("9041", "closedwon", 53, propertyName="amount", propertyValue="10"),
        ],
    )
    assert response.status_code == 200, response.text

    await eventually(
        lambda: counted(stack.target, "ignored"),
        satisfied=lambda n: n == 3,
        timeout_s=30,
        message="3 events counted as ignored",
    )
    recorded = await states(pool, stack)
    assert recorded["51"] == (
        "ignored",
        f"stage 'appointmentscheduled' is not mapped for source {stack.sources['shopify']}",
    )
    assert recorded["52"] == ("ignored", "deal 9049 was not delivered by Ponte")
    assert recorded["53"][0] == "ignored" and "not a deal stage change" in str(recorded["53"][1])
    assert counted(stack.target, "applied") == 0
    assert stack.shopify.calls == []


async def test_a_deal_that_is_two_ponte_records_is_refused_not_guessed(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    """One CRM deal recorded as the CRM record of two orders (an earlier wrong match, or a
    merge in the CRM): its status could be either order's, so neither shop is touched."""
    stack = status_stack
    await delivered(pool, stack, "shopify", "5101", "9061")
    await delivered(pool, stack, "woocommerce", "7101", "9061")
    stack.shopify.add_order("5101", closed_at=None)
    stack.woo.add_order("7101", status="processing")
    response = await post_events(stack, [stage_event("9061", "closedwon", 61)])
    assert response.status_code == 200, response.text
    await until_recorded(pool, stack, 1)
    state, reason = (await states(pool, stack))["61"]
    assert state == "failed"
    assert "deal 9061 is the CRM record of 2 Ponte records" in str(reason)
    assert f"{stack.sources['shopify']}/order/5101" in str(reason)
    assert f"{stack.sources['woocommerce']}/order/7101" in str(reason)
    assert stack.shopify.applied == [] and stack.woo.applied == []


async def test_an_older_stage_change_never_overrides_a_newer_one(
    status_stack: Stack, pool: asyncpg.Pool
) -> None:
    stack = status_stack
    await delivered(pool, stack, "woocommerce", "7006", "9051")
    stack.woo.add_order("7006", status="processing")
    now_ms = int(time.time() * 1000)
    newer = stage_event("9051", "closedwon", 61, occurred_at_ms=now_ms)
    assert (await post_events(stack, [newer])).status_code == 200
    await eventually(lambda: stack.woo.applied, timeout_s=30, message="the newer stage on Woo")
    # HubSpot delivers an earlier change late (its events are not ordered).
    older = stage_event("9051", "contractsent", 62, occurred_at_ms=now_ms - 60_000)
    assert (await post_events(stack, [older])).status_code == 200
    await until_recorded(pool, stack, 2)
    state, reason = (await states(pool, stack))["62"]
    assert state == "stale" and "already applied" in str(reason)
    assert stack.woo.applied == [("7006", "completed")]


# --- broker outage ------------------------------------------------------------------------


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    (tmp_path / "broker").mkdir()
    broker = EmbeddedBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def test_broker_down_means_503_and_the_retry_is_applied_once(
    settings: Settings,
    own_broker: EmbeddedBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pool: asyncpg.Pool,
) -> None:
    monkeypatch.setenv("TEST_HUBSPOT_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TEST_SHOPIFY_TOKEN", SHOPIFY_TOKEN)
    monkeypatch.setenv("TEST_WOO_KEY", WOO_KEY)
    monkeypatch.setenv("TEST_WOO_SECRET", WOO_SECRET)
    monkeypatch.setenv("TEST_ERP_SECRET", ERP_SECRET)
    suffix = uuid.uuid4().hex[:8]
    target = f"hs-{suffix}"
    sources = {kind: f"{kind[:4]}-{suffix}" for kind in ("shopify", "woocommerce", "erp")}
    shopify = ShopState()
    shopify.add_order("5007", closed_at=None)
    async with serve(create_shopify_stand_in(shopify, SHOPIFY_TOKEN)) as shopify_url:
        urls = {"shopify": shopify_url, "woocommerce": shopify_url, "erp": shopify_url}
        configured = settings.model_copy(
            update={
                "kafka_bootstrap": own_broker.bootstrap,
                "targets_file": write_config(tmp_path / "targets.yaml", target, urls, sources),
                "status_topic": unique_topic("ponte.status"),
                "status_dead_letter_topic": unique_topic("ponte.status.dlq"),
                "status_group_id": unique_topic("status-back"),
                "produce_timeout_s": 2.0,
            }
        )
        await kafka.ensure_topics(configured)
        async with serve(create_app(configured)) as url:
            stack = Stack(url, target, configured, shopify, ShopState(), ErpState([]), sources)
            await delivered(pool, stack, "shopify", "5007", "9061")
            event = stage_event("9061", "closedwon", 71)
            own_broker.stop(kill=True)
            during = await post_events(stack, [event])
            assert during.status_code == 503
            assert during.headers["retry-after"] == str(configured.retry_after_s)
            assert during.json()["error"] == "broker_unavailable"
            own_broker.start()
            after = await post_events(stack, [{**event, "attemptNumber": 1}])
            assert after.status_code == 200, after.text
            await eventually(
                lambda: shopify.applied, timeout_s=45, message="the retry applied on Shopify"
            )
            # A settle window, not a wait: a late copy of the first attempt would show now.
            await asyncio.sleep(1.0)
            assert shopify.applied == [("5007", "close")]
