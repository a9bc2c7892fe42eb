"""Kill -9 the transform process mid-run, restart it: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from decimal import Decimal

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from ponte.shared import kafka
from ponte.shared.settings import Settings
from tests.conftest import read_topic, service_env, service_log, start_service
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration
ORDERS = 2000


def start_transform(settings: Settings) -> subprocess.Popen[bytes]:
    return start_service("transform", service_env(settings, PONTE_TRANSFORM_BATCH_SIZE="100"))


async def wait_for(pool: asyncpg.Pool, source_id: str, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = await pool.fetchval("SELECT count(*) FROM orders WHERE source_id = $1", source_id)
        if count >= at_least:
            return int(count)
        await asyncio.sleep(0.02)
    return int(count)


async def test_kill_mid_run_and_restart(
    settings: Settings, pool: asyncpg.Pool, source_id: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    await kafka.ensure_topics(settings)
    producer: AIOKafkaProducer = kafka.create_producer(settings)
    await producer.start()
    try:
        for number in range(ORDERS):
            # Every order twice: an older version (total 1) and the newest (total = number).
            for minute, total in ((1, "1,00"), (2, f"{number},00")):
                event = raw_event(
                    "Pedido",
                    {
                        "codigo": f"P{number}",
                        "total": total,
                        "Itens pedido": [{"seq": 1}, {"seq": 2}],
                    },
                    source_id=source_id,
                    minute=minute,
                )
                await producer.send(
                    settings.raw_topic, event.model_dump_json().encode(), key=event.partition_key
                )
        await producer.flush()
    finally:
        await producer.stop()

    first = start_transform(settings)
    processes.append(first)
    seen = await wait_for(pool, source_id, ORDERS // 10, timeout_s=60)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert 0 < seen < ORDERS, f"the kill was not mid-run ({seen} orders)"

    second = start_transform(settings)
    processes.append(second)
    assert await wait_for(pool, source_id, ORDERS, timeout_s=120) == ORDERS
    await asyncio.sleep(1)  # anything in flight after the last order
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0, service_log(second)

    totals = await pool.fetch(
        "SELECT source_key, total FROM orders WHERE source_id = $1", source_id
    )
    assert len(totals) == ORDERS
    assert all(row["total"] == Decimal(row["source_key"][1:]) for row in totals)
    items = await pool.fetchval(
        "SELECT count(*) FROM order_items WHERE source_id = $1 AND deleted_at IS NULL", source_id
    )
    assert items == 2 * ORDERS
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    # Every order's newest version was published as a change event (at least once).
    changes = await read_topic(
        settings.kafka_bootstrap, settings.changes_topic, expect=2 * ORDERS, timeout_s=30
    )
    newest: dict[str, tuple[str, Decimal]] = {}  # key -> (version, total) of its newest
    for message in changes:
        change = json.loads(message.value)
        if change["entity"] == "order" and change["row"].get("total") is not None:
            seen = (change["version"]["at"], Decimal(change["row"]["total"]))
            newest[change["source_key"]] = max(newest.get(change["source_key"], seen), seen)
    assert len(newest) == ORDERS
    assert all(total == Decimal(key[1:]) for key, (_, total) in newest.items())
