"""The signed outbound webhook target, through the real deliver consumer, broker and
PostgreSQL, to a local receiver that verifies every call with the code Ponte's ingest
verifies ERP webhooks with (``ponte.shared.signatures.verify_standard``): a wrong signature
is refused there, and that refusal is what these tests would see."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ponte.deliver.connectors.registry import parse_target
from ponte.deliver.connectors.webhook import PONTE_VERSION, WebhookTarget
from ponte.shared.rejections import Rejection
from ponte.shared.settings import Settings
from ponte.shared.signatures import verify_standard
from tests.conftest import read_topic
from tests.deliver.conftest import company_change, count_deliveries, produce, run_deliver
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"receiver-secret-32-bytes-long!!!").decode()


@dataclass
class Receiver:
    """A customer's endpoint: verifies, records, answers as told."""

    secret: str = SECRET
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Verified calls: (webhook-id, body)."""
    seen_ids: list[str] = field(default_factory=list)
    """The webhook-id of every call, verified or not, in order."""
    rejected: list[str] = field(default_factory=list)
    answer_next: list[int] = field(default_factory=list)
    """Statuses to answer the next verified calls with."""
    give_ids: bool = True


def create_receiver(receiver: Receiver) -> FastAPI:
    app = FastAPI(title="webhook receiver (test)")

    @app.post("/ponte/records")
    async def records(request: Request) -> JSONResponse:
        body = await request.body()
        receiver.seen_ids.append(request.headers.get("webhook-id", ""))
        try:
            webhook_id = verify_standard(request.headers, body, [receiver.secret], tolerance_s=300)
        except Rejection as rejection:
            receiver.rejected.append(rejection.message)
            return JSONResponse(rejection.body(), status_code=rejection.status_code)
        if receiver.answer_next:
            status = receiver.answer_next.pop(0)
            return JSONResponse({"error": "as told"}, status_code=status)
        message = orjson.loads(body)
        receiver.received.append((webhook_id, message))
        if not receiver.give_ids:
            return JSONResponse({}, status_code=202)
        ids = {r["external_id"]: f"R-{r['external_id']}" for r in message.get("records", [])}
        return JSONResponse({"ids": ids})

    return app


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    state = Receiver()
    async with serve(create_receiver(state)) as url:
        yield state, url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deliver_max_attempts": 3, "deliver_max_age_s": 15.0})


def webhook_target(url: str, source_id: str, secret: str = SECRET) -> WebhookTarget:
    target = parse_target(
        {
            "id": f"wh-{source_id}",
            "kind": "webhook",
            "base_url": url,
            "path": "/ponte/records",
            "secret": secret,
            "sources": [source_id],
            "objects": {
                "company": {
                    "object_type": "company",
                    "properties": {"legal_name": "name", "document": "cnpj"},
                }
            },
        }
    )
    assert isinstance(target, WebhookTarget)
    return target


# --- tests --------------------------------------------------------------------------------


async def test_signed_batches_arrive_verified_with_the_receivers_ids(
    settings: Settings, pool: asyncpg.Pool, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    source_id = f"w-{uuid.uuid4().hex[:8]}"
    target = webhook_target(url, source_id)
    state.answer_next = [503]  # the first call fails once: its retry must carry the same id
    await produce(
        settings,
        [
            company_change(source_id, f"C{n}", minute, legal_name=f"Org {n} v{minute}")
            for n in range(5)
            for minute in (1, 2)
        ],
    )

    async def done() -> bool:
        return await count_deliveries(pool, target) == 5

    await run_deliver(settings, pool, target, done)
    assert state.rejected == []
    # The retried call had the id of the call that failed; then every call its own id.
    assert state.seen_ids[0] == state.seen_ids[1]
    assert len(set(state.seen_ids[1:])) == len(state.seen_ids[1:])
    latest: dict[str, dict[str, Any]] = {}
    for _, message in state.received:
        assert message["type"] == "ponte.records" and message["ponte_version"] == PONTE_VERSION
        assert message["object_type"] == "company" and message["operation"] == "upsert"
        for record in message["records"]:
            latest[record["external_id"]] = record["properties"]
    assert latest == {
        f"{source_id}/company/C{n}": {"name": f"Org {n} v2", "cnpj": None} for n in range(5)
    }
    rows = await pool.fetch(
        "SELECT source_key, crm_id FROM deliveries WHERE target_id = $1", target.id
    )
    assert {r["source_key"]: r["crm_id"] for r in rows} == {
        f"C{n}": f"R-{source_id}/company/C{n}" for n in range(5)
    }


async def test_without_ids_in_the_answer_the_external_id_is_the_crm_id(
    settings: Settings, pool: asyncpg.Pool, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    state.give_ids = False
    source_id = f"w-{uuid.uuid4().hex[:8]}"
    target = webhook_target(url, source_id)
    await produce(settings, [company_change(source_id, "C1", 1, legal_name="Acme")])

    async def done() -> bool:
        return await count_deliveries(pool, target) == 1

    await run_deliver(settings, pool, target, done)
    crm_id = await pool.fetchval("SELECT crm_id FROM deliveries WHERE target_id = $1", target.id)
    assert crm_id == f"{source_id}/company/C1"


@pytest.mark.parametrize(
    ("secret", "answer", "reason"),
    [
        # Signed with another secret: the receiver's verification refuses it (401).
        (
            "whsec_" + base64.b64encode(b"some-other-secret-32-bytes-long!").decode(),
            [],
            "refused with 401",
        ),
        (SECRET, [410], "410 Gone"),
    ],
)
async def test_refusals_dead_letter_at_once(
    settings: Settings,
    pool: asyncpg.Pool,
    receiver: tuple[Receiver, str],
    secret: str,
    answer: list[int],
    reason: str,
) -> None:
    state, url = receiver
    state.answer_next = list(answer)
    source_id = f"w-{uuid.uuid4().hex[:8]}"
    target = webhook_target(url, source_id, secret=secret)
    await produce(settings, [company_change(source_id, "C1", 1, legal_name="Acme")])

    async def done() -> bool:
        return await count_deliveries(pool, target, "failed") == 1

    await run_deliver(settings, pool, target, done)
    dead = await read_topic(settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=1)
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert reason in headers["ponte-dlq-reason"] and headers["ponte-dlq-attempts"] == "1"
    assert state.received == []
    if "401" in reason:
        assert state.rejected and "does not match" in state.rejected[0]


def test_secret_headers_and_config_errors() -> None:
    with pytest.raises(ValueError, match=r"headers\.webhook-id: set by Ponte"):
        parse_target(
            {
                "id": "wh",
                "kind": "webhook",
                "base_url": "http://127.0.0.1:9",
                "secret": SECRET,
                "headers": {"webhook-id": "x"},
                "objects": {"company": {"object_type": "company"}},
            }
        )
    target = webhook_target("http://127.0.0.1:9", "s")
    assert SECRET not in repr(target)
