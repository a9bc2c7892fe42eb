"""Reading dead-letter topics whole: the one loop every stage's replay uses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from ponte.shared.settings import Settings

IDLE_S = 1.0
"""How long the topics must stay quiet before they count as read to the end."""


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead-letter topic, as read (headers as text)."""

    topic: str
    partition: int
    offset: int
    key: bytes
    headers: dict[str, str]
    value: bytes

    @property
    def position(self) -> str:
        """Where it stands: ``topic/partition/offset``."""
        return f"{self.topic}/{self.partition}/{self.offset}"


async def read_until_quiet(
    settings: Settings, topics: list[str], idle_s: float = IDLE_S
) -> list[DeadLetter]:
    """Everything in ``topics``, in each partition's order: read until nothing has arrived
    for ``idle_s`` (the local broker's end offsets cannot be trusted after batched
    produces). No consumer group: reading commits nothing and moves no one's offsets."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a broker that is not there: close what was opened
        raise
    found: list[DeadLetter] = []
    clock = asyncio.get_running_loop().time
    try:
        quiet_since = clock()
        while clock() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                quiet_since = clock()
                found += [
                    DeadLetter(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key or b"",
                        {k: v.decode("utf-8", "replace") for k, v in record.headers},
                        record.value or b"",
                    )
                    for record in records
                ]
    finally:
        await consumer.stop()
    return found
