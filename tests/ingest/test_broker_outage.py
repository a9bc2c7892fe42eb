"""With the broker gone, ingest answers 503 + Retry-After and records no acceptance;
when the broker is back, the sender's retry of the same delivery is accepted."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from ponte.shared.embedded import EmbeddedBroker, free_port
from ponte.shared.settings import Settings
from ponte.shared.signatures import sign_standard
from tests.conftest import RunningIngest, serve_ingest, unique_topic, write_sources
from tests.eventually import eventually

pytestmark = pytest.mark.integration

SECRET = "outage-test-secret"


def signed(event_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "id": event_id,
            "occurred_at": "2024-11-14T12:01:32-03:00",
            "table": "Pedido",
            "rows": [{"codigo": event_id}],
        }
    ).encode()
    timestamp = int(time.time())
    return body, {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(SECRET, event_id, timestamp, body),
    }


def settings_for(base: Settings, tmp_path: Path, bootstrap: str, source_id: str) -> Settings:
    sources = write_sources(
        tmp_path / "sources.yaml", [{"id": source_id, "kind": "erp", "secrets": [SECRET]}]
    )
    return base.model_copy(
        update={
            "kafka_bootstrap": bootstrap,
            "raw_topic": unique_topic(),
            "sources_file": sources,
            "produce_timeout_s": 1.0,
        }
    )


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    broker = EmbeddedBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def test_broker_down_means_503_and_no_acceptance(
    base_settings: Settings, own_broker: EmbeddedBroker, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    settings = settings_for(base_settings, tmp_path, own_broker.bootstrap, "outage-erp")
    ingest: RunningIngest
    async for ingest in serve_ingest(settings):
        async with httpx.AsyncClient(timeout=10) as client:
            body, headers = signed(f"evt-before-{uuid.uuid4().hex}")
            before = await client.post(ingest.webhook("outage-erp"), content=body, headers=headers)
            assert before.status_code == 202, before.text

            own_broker.stop(kill=True)
            event_id = f"evt-during-{uuid.uuid4().hex}"
            body, headers = signed(event_id)
            during = await client.post(ingest.webhook("outage-erp"), content=body, headers=headers)
            assert during.status_code == 503
            assert during.headers["retry-after"] == str(settings.retry_after_s)
            assert during.json()["error"] == "broker_unavailable"
            assert (await client.get(f"{ingest.url}/readyz")).status_code == 503

            own_broker.start()

            url = ingest.webhook("outage-erp")

            async def retried(event_id: str = event_id, url: str = url) -> httpx.Response:
                # The sender retries the same event until it is accepted, as Retry-After
                # asks; while the producer reconnects, each answer may still be 503.
                body, headers = signed(event_id)
                answer = await client.post(url, content=body, headers=headers)
                assert answer.status_code in (202, 503), answer.text
                return answer

            after = await eventually(
                retried,
                satisfied=lambda answer: answer.status_code == 202,
                timeout_s=30,
                interval_s=0.5,
                message="the retried event to be accepted once the broker is back",
            )
            assert after.json()["duplicate"] is False

    outcomes = await pool.fetch(
        "SELECT outcome, status_code FROM webhook_requests WHERE source_event_id = $1 ORDER BY id",
        event_id,
    )
    answers = [(r["outcome"], r["status_code"]) for r in outcomes]
    # Refused while the broker was away (once, or more while it came back), then
    # accepted exactly once: never accepted before the broker had it, never twice.
    assert len(answers) >= 2 and answers[-1] == ("accepted", 202), answers
    assert set(answers[:-1]) == {("rejected", 503)}, answers


async def test_broker_unreachable_at_start_means_503_not_a_crash(
    base_settings: Settings, tmp_path: Path
) -> None:
    settings = settings_for(base_settings, tmp_path, f"127.0.0.1:{free_port()}", "outage-never")
    async for ingest in serve_ingest(settings, create_topics=False):
        async with httpx.AsyncClient(timeout=10) as client:
            body, headers = signed(f"evt-{uuid.uuid4().hex}")
            response = await client.post(
                ingest.webhook("outage-never"), content=body, headers=headers
            )
            assert response.status_code == 503
            assert "retry-after" in response.headers
            ready = await client.get(f"{ingest.url}/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"] is False
