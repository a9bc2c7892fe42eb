"""What the deliver tests share: change events put on the test's changes topic, the real
``DeliverConsumer`` run against one target until a condition holds, and the
``deliveries`` table counted.

The consumer is the production one (real broker, real PostgreSQL, real HTTP clients from
``build_connectors``); only the target and the stand-in it points at differ per test
file. A test waits on a condition it reads from the database or the stand-in, never on a
sleep (``tests.eventually``), and fails naming the condition at its deadline, or at once
with the consumer's own exception if the consumer died."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from ponte.deliver.app import build_connectors
from ponte.deliver.consumer import DeliverConsumer
from ponte.deliver.engine import Deliverer
from ponte.deliver.targets import Target
from ponte.shared import kafka
from ponte.shared.settings import Settings
from tests.eventually import eventually

Condition = Callable[[], Awaitable[bool]]
"""What a test waits for, read fresh on every poll."""


def company_change(
    source_id: str,
    key: str,
    minute: int,
    *,
    row_id: int = 1,
    operation: str = "upsert",
    **row: Any,
) -> dict[str, Any]:
    """A transform change event for one company, as it stands on the changes topic.

    ``minute`` orders the versions of one key (the version time is 15:<minute>); columns
    not given are null, as the transform writes them."""
    return {
        "entity": "company",
        "source_id": source_id,
        "source_key": key,
        "row_id": row_id,
        "operation": operation,
        "changed": list(row),
        "version": {"at": f"2024-11-14T15:{minute:02d}:00+00:00", "event_id": f"e{minute}"},
        "row": {"legal_name": None, "document": None, **row},
    }


async def produce(settings: Settings, changes: list[dict[str, Any]]) -> None:
    """Put ``changes`` on the test's changes topic, keyed per record as the transform keys
    them (so one record's versions share a partition and keep their order)."""
    await kafka.ensure_topics(settings)
    producer: AIOKafkaProducer = kafka.create_producer(settings)
    await producer.start()
    try:
        for value in changes:
            key = f"{value['entity']}/{value['source_id']}/{value['source_key']}"
            await producer.send(settings.changes_topic, orjson.dumps(value), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


@asynccontextmanager
async def delivering(
    settings: Settings, pool: asyncpg.Pool, target: Target
) -> AsyncIterator[asyncio.Task[None]]:
    """The real deliver consumer running for the block (one consumer for several phases:
    a second consumer in the same group would wait for a rebalance)."""
    producer = kafka.create_producer(settings)
    await producer.start()
    connectors, clients = build_connectors([target], settings)
    consumer = DeliverConsumer(settings, Deliverer(settings, pool, producer, connectors))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await task
        for client in clients:
            await client.aclose()
        await producer.stop()


async def until(task: asyncio.Task[None], done: Condition, timeout_s: float = 30.0) -> None:
    """Poll ``done`` while the consumer ``task`` runs; fail at the deadline, or with the
    consumer's exception as soon as it stops."""
    what = getattr(done, "__qualname__", repr(done))  # the test's own function names it
    await eventually(done, timeout_s=timeout_s, task=task, message=f"deliver: {what}")


async def run_deliver(
    settings: Settings,
    pool: asyncpg.Pool,
    target: Target,
    done: Condition,
    timeout_s: float = 30.0,
) -> None:
    """Run the deliver consumer until ``done`` holds, then stop it."""
    async with delivering(settings, pool, target) as task:
        await until(task, done, timeout_s)


async def count_deliveries(pool: asyncpg.Pool, target: Target, state: str = "delivered") -> int:
    """How many records of ``target`` the deliveries table has in ``state``."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE target_id = $1 AND state = $2", target.id, state
        )
    )
