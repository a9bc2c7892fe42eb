"""The transactional outbox: change events and dead letters are written in the same
transaction as the rows they describe, and published after it commits.

``OutboxRelay.publish_pending`` reads the oldest messages, produces them (acks=all), and
deletes them only once the broker has every one. A crash between produce and delete
re-publishes them: consumers of the changes topic must tolerate a repeat, which the
version in every change event makes easy (deliver keeps the newest version it has sent).
Only one relay publishes at a time across replicas (a PostgreSQL advisory lock), and it
publishes in id order, so one key's changes keep their order.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from ponte.shared.db import DbConnection
from ponte.shared.metrics import TRANSFORM_OUTBOX_FAILED, TRANSFORM_OUTBOX_PUBLISHED

log = logging.getLogger(__name__)

RELAY_LOCK = 0x706F6E7465  # "ponte": the advisory lock id of the outbox relay
RELAY_BATCH = 1000
RELAY_PASS_BATCHES = 10


OutboxEntry = tuple[str, str, dict[str, Any], dict[str, str]]
"""(topic, key, value, headers)"""


def encode(value: dict[str, Any]) -> bytes:
    """JSON once, in C: decimals and times as text (orjson writes times as RFC 3339)."""
    return orjson.dumps(value, default=_text)


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


async def add_messages(connection: DbConnection, messages: list[OutboxEntry]) -> None:
    """Queue (topic, key, value, headers) for publication, inside the caller's transaction."""
    if not messages:
        return
    now = datetime.now(UTC)
    await connection.execute(
        "INSERT INTO outbox (topic, key, value, headers, created_at) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[], $5::timestamptz[])",
        [m[0] for m in messages],
        [m[1] for m in messages],
        [encode(m[2]) for m in messages],
        [m[3] for m in messages],
        [now] * len(messages),
    )


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
        self._pool = pool
        self._producer = producer
        self._lock = asyncio.Lock()

    async def publish_pending(self) -> int:
        """Publish everything pending; returns how many messages went out."""
        published = 0
        async with self._lock, self._pool.acquire() as connection, connection.transaction():
            # A transaction-level lock: released by commit or rollback whatever happens,
            # never left behind on a pooled connection.
            if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                return 0  # another replica is relaying
            after = 0
            # One transaction per pass, of at most RELAY_PASS_BATCHES batches: the deletes
            # commit at its end; the next pass (after the next batch, or the relay's
            # interval) takes the rest.
            for _ in range(RELAY_PASS_BATCHES):
                rows = await connection.fetch(
                    "SELECT id, topic, key, value, headers FROM outbox WHERE id > $1 "
                    "ORDER BY id LIMIT $2",
                    after,
                    RELAY_BATCH,
                )
                if not rows:
                    return published
                futures = [
                    await self._producer.send(
                        row["topic"],
                        key=row["key"].encode(),
                        value=row["value"],
                        headers=[(name, value.encode()) for name, value in row["headers"].items()],
                    )
                    for row in rows
                ]
                outcomes = await asyncio.gather(*futures, return_exceptions=True)
                # Delete what the broker has; a message it refuses stays (logged, counted)
                # without holding back the ones after it.
                sent = [
                    row["id"]
                    for row, outcome in zip(rows, outcomes, strict=True)
                    if not isinstance(outcome, BaseException)
                ]
                for row, outcome in zip(rows, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        TRANSFORM_OUTBOX_FAILED.inc()
                        log.error(
                            "outbox message refused by the broker; kept",
                            extra={
                                "outbox_id": row["id"],
                                "topic": row["topic"],
                                "error": type(outcome).__name__,
                            },
                        )
                await connection.execute("DELETE FROM outbox WHERE id = ANY($1::int8[])", sent)
                published += len(sent)
                TRANSFORM_OUTBOX_PUBLISHED.inc(len(sent))
                after = rows[-1]["id"]
        return published
