"""The deliver service's Kafka loop: the changes topic, manual commits after delivery.

A batch's offsets are committed only once every change in it is delivered, recorded as
failed in the dead-letter topic (acknowledged), skipped as already delivered, or kept
waiting for a record it refers to (``waiting_deliveries``, ``ponte.deliver.references``). A crash
before the commit re-reads the batch; versions already delivered are skipped, so the CRM
sees at most a repeat of the newest version, never an older one.

A batch lingers: when the broker has fewer than ``MAX_BATCH`` changes ready, the loop
keeps polling for up to ``deliver_linger_ms`` before delivering. Under a CRM's rate limit
the scarce thing is calls, not records: HubSpot allows 100 calls per 10 s of up to 100
records each, and a batch of 7 changes spends a call as surely as one of 100. Without the
linger, live traffic near the limit is sent as many small calls that use up the window
within a second, and the records behind them wait for the window to move on (the
benchmark in docs/benchmarks-deliver.md measures both). A backlog is not slowed down: a
full batch goes at once. The batch is still one unit: its offsets are committed after
``deliver`` returns, as before.

The loop itself (connect, poll, retry through outages, commit) is
``ponte.shared.kafka.consume``; this module gives it the linger, the parsing and the
delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError

from ponte.deliver.changes import Change, parse_change
from ponte.deliver.engine import Deliverer
from ponte.shared import db, kafka
from ponte.shared.metrics import DELIVER_LATENCY, DELIVER_OUTCOMES
from ponte.shared.settings import Settings

log = logging.getLogger(__name__)

UNAVAILABLE = (*db.UNAVAILABLE, KafkaError)
"""A batch that fails with one of these is retried in place until it succeeds."""
MAX_BATCH = 1000
"""Changes delivered (and committed) together at most: ten calls of HubSpot's 100."""
POLL_TIMEOUT_MS = 100


class DeliverConsumer:
    def __init__(self, settings: Settings, deliverer: Deliverer) -> None:
        self._settings = settings
        self._deliverer = deliverer
        self.running = False

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; offsets committed after each batch is delivered."""
        make = partial(
            kafka.create_consumer,
            self._settings,
            self._settings.changes_topic,
            group_id=self._settings.deliver_group_id,
            client="deliver",
            max_poll_records=MAX_BATCH,
        )
        await kafka.consume(
            make,
            stop,
            "deliver",
            poll=self._collect,
            parse=lambda batch: kafka.parse_records(batch, parse_change, _unreadable),
            apply=self._deliver,
            transient=UNAVAILABLE,
            on_running=self._set_running,
        )

    def _set_running(self, running: bool) -> None:
        self.running = running

    async def _deliver(self, changes: list[Change]) -> None:
        """Deliver the batch and count its outcome. Retried whole through a database or
        broker outage: re-sending what reached the CRM before one is harmless (upserts by
        external id, newest version)."""
        outcome = await self._deliverer.deliver(changes)
        for target_id, result in outcome.items():
            DELIVER_OUTCOMES.labels(target_id, "delivered").inc(len(result.delivered))
            DELIVER_OUTCOMES.labels(target_id, "dead_letter").inc(len(result.failed))
            DELIVER_OUTCOMES.labels(target_id, "skipped").inc(result.skipped)
            DELIVER_OUTCOMES.labels(target_id, "waiting").inc(len(result.waiting))
            acknowledged = time.time()
            latency = DELIVER_LATENCY.labels(target_id)
            for change, crm_id in result.delivered:
                if change.published_at is not None and crm_id is not None:
                    latency.observe(max(0.0, acknowledged - change.published_at))

    async def _collect(self, consumer: AIOKafkaConsumer) -> kafka.Batch:
        """What the broker has ready, then more for up to ``deliver_linger_ms`` until the
        batch holds ``MAX_BATCH`` changes (see the module docstring). Each partition's
        records stay in offset order, so its last one is still the offset to commit."""
        batch: kafka.Batch = await consumer.getmany(
            timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_BATCH
        )
        count = sum(len(records) for records in batch.values())
        if not count:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.deliver_linger_ms / 1000
        while count < MAX_BATCH and (left := deadline - loop.time()) > 0:
            more: kafka.Batch = await consumer.getmany(
                timeout_ms=max(1, int(left * 1000)), max_records=MAX_BATCH - count
            )
            for partition, records in more.items():
                batch.setdefault(partition, []).extend(records)
                count += len(records)
        return batch


def _unreadable(record: ConsumerRecord[bytes, bytes]) -> None:
    log.error(
        "not a change event; skipped",
        extra={"partition": record.partition, "offset": record.offset},
    )
    DELIVER_OUTCOMES.labels("-", "unreadable").inc()
