"""The outbox relay against the real broker and PostgreSQL: a just-committed batch goes out
from memory, in order per key, on the partition the default partitioner picks, and leaves
the table; anything older still waiting goes out first; nothing is sent twice when the
relay loop was quicker."""

from __future__ import annotations

import json
from collections import defaultdict

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from ponte.shared.settings import Settings
from ponte.transform.outbox import OutboxEntry, OutboxRelay, Outgoing, add_messages
from tests.conftest import read_topic

pytestmark = pytest.mark.integration


def entries(settings: Settings, keys: int, versions: range) -> list[OutboxEntry]:
    """``keys`` keys, each with ``versions`` in order, interleaved as a batch writes them;
    values of ~1 KB so that one partition's share spans several record batches."""
    return [
        (
            settings.changes_topic,
            f"order/src/K{key}",
            {"key": f"K{key}", "n": n, "padding": "x" * 1000},
            {"ponte-entity": "order"},
        )
        for n in versions
        for key in range(keys)
    ]


async def commit(pool: asyncpg.Pool, messages: list[OutboxEntry]) -> list[Outgoing]:
    async with pool.acquire() as connection, connection.transaction():
        return await add_messages(connection, messages)


async def remaining(pool: asyncpg.Pool, written: list[Outgoing]) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE id = ANY($1::int8[])", [m[0] for m in written]
    )
    return count


async def published(settings: Settings, expect: int) -> dict[bytes, list[int]]:
    """Each key's ``n`` values in the order the changes topic holds them; also checks
    that every message sits on the partition aiokafka's own partitioner would pick."""
    records = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=expect)
    partitions = list(range(settings.changes_topic_partitions))
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.key is not None and record.value is not None
        assert record.partition == DefaultPartitioner()(record.key, partitions, partitions)
        assert dict(record.headers) == {"ponte-entity": b"order"}
        by_key[record.key].append(json.loads(record.value)["n"])
    return dict(by_key)


async def test_a_committed_batch_goes_out_from_memory_in_order_per_key(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    written = await commit(pool, entries(settings, keys=12, versions=range(40)))
    assert [m[0] for m in written] == sorted(m[0] for m in written)

    assert await OutboxRelay(pool, producer).publish_committed(written) == 480
    assert await remaining(pool, written) == 0
    by_key = await published(settings, expect=480)
    assert by_key == {f"order/src/K{key}".encode(): list(range(40)) for key in range(12)}


async def test_an_older_waiting_message_goes_out_before_the_batch(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    # Left behind by a failed publish (or a crash) before the batch.
    older = await commit(pool, entries(settings, keys=3, versions=range(1)))
    written = await commit(pool, entries(settings, keys=3, versions=range(1, 6)))

    assert await OutboxRelay(pool, producer).publish_committed(written) == 18
    assert await remaining(pool, older + written) == 0
    by_key = await published(settings, expect=18)
    assert by_key == {f"order/src/K{key}".encode(): list(range(6)) for key in range(3)}


async def test_what_the_relay_loop_published_first_is_not_sent_again(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    written = await commit(pool, entries(settings, keys=4, versions=range(5)))
    relay = OutboxRelay(pool, producer)
    assert await relay.publish_pending() == 20

    assert await relay.publish_committed(written) == 0
    by_key = await published(settings, expect=20)
    assert sum(len(ns) for ns in by_key.values()) == 20  # read_topic waits for extras
    assert by_key == {f"order/src/K{key}".encode(): list(range(5)) for key in range(4)}
