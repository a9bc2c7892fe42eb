"""The deliver service's Kafka loop: the changes topic, manual commits after delivery.

A batch's offsets are committed only once every change in it is delivered, recorded as
failed in the dead-letter topic (acknowledged), or skipped as already delivered. A crash
before the commit re-reads the batch; versions already delivered are skipped, so the CRM
sees at most a repeat of the newest version, never an older one.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from ponte.deliver.changes import Change, parse_change
from ponte.deliver.engine import Deliverer
from ponte.shared import kafka
from ponte.shared.metrics import DELIVER_OUTCOMES
from ponte.shared.settings import Settings

log = logging.getLogger(__name__)

UNAVAILABLE = (OSError, TimeoutError, KafkaError)


class DeliverConsumer:
    def __init__(self, settings: Settings, deliverer: Deliverer) -> None:
        self._settings = settings
        self._deliverer = deliverer
        self.running = False

    async def run(self, stop: asyncio.Event) -> None:
        def make() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                self._settings.changes_topic,
                bootstrap_servers=self._settings.kafka_bootstrap,
                client_id=f"{self._settings.kafka_client_id}-deliver",
                group_id=self._settings.deliver_group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=1000,
            )

        consumer = await kafka.connect(make, stop, "deliver consumer")
        if consumer is None:
            return
        self.running = True
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=1000)
                if not batch:
                    continue
                changes: list[Change] = []
                for records in batch.values():
                    for record in records:
                        change = parse_change(
                            record.value, record.topic, record.partition, record.offset
                        )
                        if change is None:
                            log.error(
                                "not a change event; skipped",
                                extra={"partition": record.partition, "offset": record.offset},
                            )
                            DELIVER_OUTCOMES.labels("-", "unreadable").inc()
                        else:
                            changes.append(change)
                outcome = await self._deliverer.deliver(changes)
                for target_id, result in outcome.items():
                    DELIVER_OUTCOMES.labels(target_id, "delivered").inc(len(result.delivered))
                    DELIVER_OUTCOMES.labels(target_id, "dead_letter").inc(len(result.failed))
                    DELIVER_OUTCOMES.labels(target_id, "skipped").inc(result.skipped)
                try:
                    await consumer.commit(
                        {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    )
                except CommitFailedError:
                    log.warning("offset commit failed after a rebalance; batch will be re-read")
        finally:
            self.running = False
            await consumer.stop()
