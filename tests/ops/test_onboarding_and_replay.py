"""The onboarding check end to end (webhooks through the real ingest, broker and transform
into the CRM model), and ``/ops/replay`` over the real dead-letter topic."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from ponte.shared.settings import Settings
from tests.conftest import RunningIngest, read_topic
from tests.eventually import eventually
from tests.ops.conftest import RunningOps, send_webhook, wait_for_history
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration


@pytest.fixture
async def transform(settings: Settings) -> AsyncIterator[None]:
    """The real transform app (consumer included) over the test's raw topic."""
    from ponte.transform.app import create_app

    async with serve(create_app(settings)):
        yield


def erp_body(table: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"evt-{uuid.uuid4().hex}",
        "occurred_at": "2024-11-14T12:01:32-03:00",
        "operation": "upsert",
        "table": table,
        "rows": rows,
    }


async def wait_for_rows(pool: asyncpg.Pool, source_id: str, count: int) -> None:
    """The transform stores in the background: wait until ``count`` rows are in."""
    await eventually(
        lambda: pool.fetchval(
            "SELECT (SELECT count(*) FROM companies WHERE source_id = $1) "
            "+ (SELECT count(*) FROM orders WHERE source_id = $1)",
            source_id,
        ),
        satisfied=lambda found: found >= count,
        timeout_s=20,
        message=f"the transform to store {count} rows",
    )


async def test_onboarding_counts_each_step_per_table(
    ops: RunningOps,
    ingest: RunningIngest,
    transform: None,
    pool: asyncpg.Pool,
    source_id: str,
) -> None:
    companies = [{"codigo": "E1", "razao_social": "Um"}, {"codigo": "E2", "razao_social": "Dois"}]
    orders = [
        {"codigo": "PED-1", "empresa": "E1", "total": "1.234,56"},
        {"codigo": "PED-2", "empresa": "E9", "total": "10,00"},  # E9 never arrives: parked
        {"codigo": "PED-3", "empresa": "E2", "total": "5,00"},
    ]
    assert (
        await send_webhook(ingest, source_id, erp_body("Empresa", companies))
    ).status_code == 202
    assert (await send_webhook(ingest, source_id, erp_body("Pedido", orders))).status_code == 202
    rejected = await send_webhook(ingest, source_id, erp_body("Pedido", orders), secret="w" * 20)
    assert rejected.status_code == 401
    await wait_for_history(pool, source_id, 3)
    await wait_for_rows(pool, source_id, 5)
    # What the deliver service records per row and CRM target.
    now = datetime.now(UTC)
    await pool.executemany(
        "INSERT INTO deliveries (target_id, entity, source_id, source_key, state, attempts, "
        "updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6)",
        [
            ("crm-a", "company", source_id, "E1", "delivered", now),
            ("crm-b", "company", source_id, "E1", "delivered", now),  # counted once
            ("crm-a", "company", source_id, "E2", "failed", now),
            ("crm-a", "order", source_id, "PED-1", "delivered", now),
        ],
    )
    # What the transform records when a skip rule leaves rows out (test_row_filters).
    await pool.execute(
        "INSERT INTO skipped_rows (source_id, source_table, rule, occurrences, first_seen, "
        "last_seen, example_event_id) VALUES ($1, 'Empresa', 'tipo in [I]', 2, $2, $2, 'e')",
        source_id,
        now,
    )

    async with ops.client() as client:
        answer = await client.get(f"/ops/sources/{source_id}/onboarding")
        missing = await client.get("/ops/sources/nobody/onboarding")
    assert answer.status_code == 200, answer.text
    tables = {table["table"]: table for table in answer.json()["tables"]}
    assert tables["Empresa"] == {
        "table": "Empresa",
        "requests": 1,
        "records": 2,
        "stored": 2,
        "parked": 0,
        "delivered": 1,
        "failed": 1,
        "skipped": 2,
    }
    assert tables["Pedido"] == {
        "table": "Pedido",
        "requests": 1,  # the rejected request is not "received"
        "records": 3,
        "stored": 3,
        "parked": 1,
        "delivered": 1,
        "failed": 0,
        "skipped": 0,
    }
    assert missing.status_code == 404


def dead_letter(source_id: str, key: str, failed_at: datetime, target: str) -> dict[str, Any]:
    """A dead letter in the format the deliver engine writes (``Deliverer._dead_letter``)."""
    return {
        "key": f"{source_id}/company/{key}".encode(),
        "value": orjson.dumps(
            {
                "target": target,
                "change": {
                    "entity": "company",
                    "source_id": source_id,
                    "source_key": key,
                    "row_id": 1,
                    "operation": "upsert",
                    "row": {"code": key},
                    "version": {"at": None, "event_id": None},
                },
            }
        ),
        "headers": [
            (name, value.encode())
            for name, value in {
                "ponte-target": target,
                "ponte-dlq-reason": "HTTP 400: bad email",
                "ponte-dlq-last-attempt": failed_at.isoformat(),
                "ponte-entity": "company",
                "ponte-source": source_id,
            }.items()
        ],
    }


async def test_replay_lists_then_sends_the_selected_dead_letters(
    ops: RunningOps, settings: Settings, source_id: str
) -> None:
    now = datetime.now(UTC)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for key, age, target in (("E1", 1, "crm-a"), ("E2", 30, "crm-a"), ("E3", 1, "crm-b")):
            await producer.send_and_wait(
                settings.deliver_dead_letter_topic,
                **dead_letter(source_id, key, now - timedelta(minutes=age), target),
            )
    finally:
        await producer.stop()

    selection = {
        "target_id": "crm-a",
        "source_id": source_id,
        "since": (now - timedelta(minutes=10)).isoformat(),
    }
    async with ops.client(**{"X-Ponte-Actor": "dev@example.com"}) as client:
        dry = await client.post("/ops/replay", json=selection)
        assert dry.status_code == 200, dry.text
        assert dry.json()["dry_run"] is True
        assert [item["external_id"] for item in dry.json()["items"]] == [f"{source_id}/company/E1"]
        assert dry.json()["items"][0]["reason"] == "HTTP 400: bad email"
        assert (
            await read_topic(
                settings.kafka_bootstrap, settings.changes_topic, expect=0, timeout_s=1
            )
            == []
        )
        sent = await client.post("/ops/replay", json={**selection, "dry_run": False})
        naive = await client.post("/ops/replay", json={"since": "2024-11-14T12:00:00"})
        audit = (await client.get("/ops/audit", params={"source_id": source_id})).json()
    assert sent.json()["count"] == 1 and sent.json()["dry_run"] is False
    replayed = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=1)
    assert [message.key for message in replayed] == [f"company/{source_id}/E1".encode()]
    assert orjson.loads(replayed[0].value or b"")["source_key"] == "E1"
    assert naive.status_code == 422 and naive.json()["problems"][0]["field"] == "body.since"
    (entry,) = audit["items"]  # the dry run is not audited
    assert entry["field"] == "replay" and entry["actor"] == "dev@example.com"
    assert entry["new_value"]["replayed"] == 1
