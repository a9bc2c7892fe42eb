"""Replay: put dead-lettered changes back on the changes topic after a fix.

Selected by target, entity, source, time of failure or external ids. Replay is idempotent:
the deliver service skips a version a target already has, so replaying twice, or
replaying a change another target already delivered, sends nothing new. ``dry_run``
returns (and the CLI prints) what would be replayed without sending anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import orjson
from aiokafka import AIOKafkaConsumer

from ponte.shared import kafka
from ponte.shared.settings import Settings


@dataclass
class Replayed:
    target: str
    external_id: str
    reason: str
    failed_at: str


async def _dead_letters(
    settings: Settings, idle_s: float = 1.0
) -> list[tuple[bytes, dict[str, str], bytes]]:
    """Everything in the deliver dead-letter topic: read until it stays quiet (the local
    broker's end offsets cannot be trusted after batched produces)."""
    consumer = AIOKafkaConsumer(
        settings.deliver_dead_letter_topic,
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
    found = []
    try:
        quiet_since = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                quiet_since = asyncio.get_running_loop().time()
                for record in records:
                    headers = {k: v.decode() for k, v in record.headers}
                    found.append((record.key or b"", headers, record.value or b""))
    finally:
        await consumer.stop()
    return found


async def replay(
    settings: Settings,
    *,
    target_id: str | None = None,
    entity: str | None = None,
    source_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    external_ids: set[str] | None = None,
    dry_run: bool = True,
) -> list[Replayed]:
    selected: list[tuple[Replayed, bytes, bytes]] = []
    for key, headers, value in await _dead_letters(settings):
        failed_at = headers.get("ponte-dlq-last-attempt", "")
        when = datetime.fromisoformat(failed_at) if failed_at else None
        if (
            (target_id and headers.get("ponte-target") != target_id)
            or (entity and headers.get("ponte-entity") != entity)
            or (source_id and headers.get("ponte-source") != source_id)
            or (since and (when is None or when < since))
            or (until and (when is None or when > until))
            or (external_ids and key.decode() not in external_ids)
        ):
            continue
        change = orjson.loads(value)["change"]
        change.setdefault("changed", [])
        change_key = f"{change['entity']}/{change['source_id']}/{change['source_key']}"
        selected.append(
            (
                Replayed(
                    headers.get("ponte-target", ""),
                    key.decode(),
                    headers.get("ponte-dlq-reason", ""),
                    failed_at,
                ),
                change_key.encode(),
                orjson.dumps(change),
            )
        )
    if not dry_run and selected:
        producer = kafka.create_producer(settings)
        await producer.start()
        try:
            acks = [
                await producer.send(settings.changes_topic, value=value, key=key)
                for _, key, value in selected
            ]
            await asyncio.gather(*acks)
        finally:
            await producer.stop()
    return [item for item, _, _ in selected]
