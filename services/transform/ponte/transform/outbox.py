"""The transactional outbox: change events and dead letters are written in the same
transaction as the rows they describe, and published after it commits.

Two ways out, one set of rules:
- ``OutboxRelay.publish_committed``: right after a batch's transaction commits, the
  consumer hands over the messages it has just written (``add_messages`` returns them
  with their ids, already encoded). When nothing older is waiting in the table, they are
  produced from memory and deleted by id: no read-back of ~1 KB per change event.
- ``OutboxRelay.publish_pending``: reads the oldest messages from the table in id order.
  It runs every few seconds, and whenever the fast path finds something older waiting
  (a failed publish, a crash, the parked-reference sweep, the classifier, another
  replica), so the table stays the crash-safe record of what is still to go out.

Either way a message is deleted only once the broker has it (acks=all). A crash between
produce and delete re-publishes it: consumers of the changes topic must tolerate a repeat,
which the version in every change event makes easy (deliver keeps the newest version it
has sent). Only one relay publishes at a time across replicas (a PostgreSQL advisory
lock), and it publishes in id order, so one key's changes keep their order.

Messages are produced as whole record batches per partition (``send_batch``), with the
partition chosen here exactly as the default partitioner would (``ponte.shared.partitioner``): one
future per batch instead of one ``send`` per message, which was aiokafka's per-message
partitioner, serialiser and future (about 9% of the transform's CPU).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from ponte.shared.db import DbConnection
from ponte.shared.metrics import TRANSFORM_OUTBOX_FAILED, TRANSFORM_OUTBOX_PUBLISHED
from ponte.shared.partitioner import partition_for

log = logging.getLogger(__name__)

RELAY_LOCK = 0x706F6E7465  # "ponte": the advisory lock id of the outbox relay
RELAY_BATCH = 1000
RELAY_PASS_BATCHES = 10


OutboxEntry = tuple[str, str, dict[str, Any], dict[str, str]]
"""(topic, key, value, headers)"""

Outgoing = tuple[int, str, bytes, bytes, list[tuple[str, bytes]]]
"""(outbox id, topic, key, value, headers): one outbox row as the producer takes it.
A plain tuple: thousands are made per batch."""


def encode(value: dict[str, Any]) -> bytes:
    """JSON once, in C: decimals and times as text (orjson writes times as RFC 3339)."""
    return orjson.dumps(value, default=_text)


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


async def add_messages(connection: DbConnection, messages: list[OutboxEntry]) -> list[Outgoing]:
    """Queue (topic, key, value, headers) for publication, inside the caller's transaction.
    Returns them as written, with their ids, for ``OutboxRelay.publish_committed`` once
    the transaction has committed (and to be dropped if it rolls back)."""
    if not messages:
        return []
    now = datetime.now(UTC)
    values = [encode(m[2]) for m in messages]
    # INSERT ... SELECT FROM unnest inserts, numbers (nextval) and returns the rows in
    # the array's order, so the ids line up with ``messages``; sorting them is a guard.
    rows = await connection.fetch(
        "INSERT INTO outbox (topic, key, value, headers, created_at) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[], $5::timestamptz[]) "
        "RETURNING id",
        [m[0] for m in messages],
        [m[1] for m in messages],
        values,
        [m[3] for m in messages],
        [now] * len(messages),
    )
    ids = sorted(row[0] for row in rows)
    return [
        (
            outbox_id,
            message[0],
            message[1].encode(),
            value,
            [(name, text.encode()) for name, text in message[3].items()],
        )
        for outbox_id, message, value in zip(ids, messages, values, strict=True)
    ]


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
        self._pool = pool
        self._producer = producer
        self._lock = asyncio.Lock()

    async def publish_pending(self) -> int:
        """Publish everything pending from the table; returns how many messages went out."""
        async with self._lock, self._pool.acquire() as connection, connection.transaction():
            # A transaction-level lock: released by commit or rollback whatever happens,
            # never left behind on a pooled connection.
            if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                return 0  # another replica is relaying
            return await self._publish_table(connection)

    async def publish_committed(self, written: Sequence[Outgoing]) -> int:
        """Publish what one transaction has just committed (``add_messages``' result),
        from memory, when nothing older is waiting; otherwise from the table in id order,
        so that no key's change overtakes an older one. Returns how many went out."""
        if not written:
            return 0
        mine = [message[0] for message in written]
        async with self._lock, self._pool.acquire() as connection, connection.transaction():
            if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                return 0  # another replica is relaying: it reads these from the table
            waiting = await connection.fetch(
                "SELECT id FROM outbox WHERE id <= $1 ORDER BY id", mine[-1]
            )
            if [row[0] for row in waiting] == mine:
                return await self._produce_and_delete(connection, written)
            if not waiting:
                return 0  # the relay loop was quicker: already published
            return await self._publish_table(connection)

    async def _publish_table(self, connection: DbConnection) -> int:
        """The oldest pending messages in id order, within the caller's transaction and
        advisory lock: at most RELAY_PASS_BATCHES batches, whose deletes commit at its end;
        the next pass (after the next batch, or the relay's interval) takes the rest."""
        published = 0
        after = 0
        for _ in range(RELAY_PASS_BATCHES):
            rows = await connection.fetch(
                "SELECT id, topic, key, value, headers FROM outbox WHERE id > $1 "
                "ORDER BY id LIMIT $2",
                after,
                RELAY_BATCH,
            )
            if not rows:
                break
            messages: list[Outgoing] = [
                (
                    row["id"],
                    row["topic"],
                    row["key"].encode(),
                    row["value"],
                    [(name, value.encode()) for name, value in row["headers"].items()],
                )
                for row in rows
            ]
            published += await self._produce_and_delete(connection, messages)
            after = rows[-1]["id"]
        return published

    async def _produce_and_delete(
        self, connection: DbConnection, messages: Sequence[Outgoing]
    ) -> int:
        """Produce, then delete what the broker has; a message it refuses stays (logged,
        counted) without holding back the ones after it."""
        sent = await self._produce(messages)
        await connection.execute("DELETE FROM outbox WHERE id = ANY($1::int8[])", sent)
        TRANSFORM_OUTBOX_PUBLISHED.inc(len(sent))
        return len(sent)

    async def _produce(self, messages: Sequence[Outgoing]) -> list[int]:
        """Produce ``messages`` (in id order) and return the ids the broker acknowledged.

        Each partition's messages go into record batches in id order, so one key's
        changes keep their order. The batches are handed to the producer round-robin over
        the partitions: aiokafka queues one batch per partition at a time, and taking the
        partitions in turn lets each request to the broker carry all of them."""
        partitions: dict[str, list[int]] = {}
        queues: dict[tuple[str, int], list[Outgoing]] = {}
        for message in messages:
            topic = message[1]
            if topic not in partitions:
                partitions[topic] = sorted(await self._producer.partitions_for(topic))
            target = (topic, partition_for(message[2], partitions[topic]))
            queue = queues.get(target)
            if queue is None:
                queues[target] = [message]
            else:
                queue.append(message)
        # Fill the record batches first (pure CPU, no waiting), then hand them over.
        batches: list[list[tuple[tuple[str, int], Any, list[int]]]] = []
        for target, queue in queues.items():
            builder = self._producer.create_batch()
            ids: list[int] = []
            rounds = 0
            for outbox_id, _topic, key, value, headers in queue:
                if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    if rounds == len(batches):
                        batches.append([])
                    batches[rounds].append((target, builder, ids))
                    rounds += 1
                    builder, ids = self._producer.create_batch(), []
                    # A message larger than an empty batch still goes, alone in its batch
                    # (the builder always takes one message).
                    builder.append(key=key, value=value, timestamp=None, headers=headers)
                ids.append(outbox_id)
            if rounds == len(batches):
                batches.append([])
            batches[rounds].append((target, builder, ids))
        futures: list[tuple[asyncio.Future[Any], list[int]]] = []
        for round_ in batches:
            for (topic, partition), builder, ids in round_:
                builder.close()
                futures.append(
                    (await self._producer.send_batch(builder, topic, partition=partition), ids)
                )
        outcomes = await asyncio.gather(*(future for future, _ in futures), return_exceptions=True)
        sent: list[int] = []
        for (_future, ids), outcome in zip(futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                TRANSFORM_OUTBOX_FAILED.inc(len(ids))
                log.error(
                    "outbox batch refused by the broker; kept",
                    extra={"outbox_ids": [ids[0], ids[-1]], "error": type(outcome).__name__},
                )
            else:
                sent += ids
        return sent
