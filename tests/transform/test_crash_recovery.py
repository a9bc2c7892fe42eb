"""Kill -9 the transform process mid-run, restart it: nothing lost, nothing doubled."""

from __future__ import annotations

import json
import signal
import subprocess
from decimal import Decimal

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from ponte.shared import kafka
from ponte.shared.settings import Settings
from tests.conftest import read_topic, service_env, service_log, start_service
from tests.eventually import eventually
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration
ORDERS = 2000


def start_transform(settings: Settings) -> subprocess.Popen[bytes]:
    return start_service("transform", service_env(settings, PONTE_TRANSFORM_BATCH_SIZE="100"))


async def stored(pool: asyncpg.Pool, source_id: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM orders WHERE source_id = $1", source_id))


async def settled(pool: asyncpg.Pool, source_id: str) -> tuple[int, int, int]:
    """Orders at their newest total, live order items, outbox rows left: what the end
    state must be once nothing is in flight any more."""
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM orders
                WHERE source_id = $1 AND total = substr(source_key, 2)::numeric) AS newest,
               (SELECT count(*) FROM order_items
                WHERE source_id = $1 AND deleted_at IS NULL) AS items,
               (SELECT count(*) FROM outbox) AS outbox
        """,
        source_id,
    )
    return row["newest"], row["items"], row["outbox"]


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
    seen = await eventually(
        lambda: stored(pool, source_id),
        satisfied=lambda count: count >= ORDERS // 10,
        timeout_s=60,
        interval_s=0.02,  # fine-grained: the kill must land mid-run
        message=f"{ORDERS // 10} orders stored by the first transform",
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert 0 < seen < ORDERS, f"the kill was not mid-run ({seen} orders)"

    second = start_transform(settings)
    processes.append(second)
    assert (
        await eventually(
            lambda: stored(pool, source_id),
            satisfied=lambda count: count >= ORDERS,
            timeout_s=120,
            message=f"{ORDERS} orders stored after the restart",
        )
        == ORDERS
    )
    # The last orders' newest versions, their items and the outbox's relay may still be in
    # flight: wait for that end state, then stop the transform and check it strictly.
    await eventually(
        lambda: settled(pool, source_id),
        satisfied=lambda state: state == (ORDERS, 2 * ORDERS, 0),
        timeout_s=60,
        message="newest totals, live items and an empty outbox",
    )
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
