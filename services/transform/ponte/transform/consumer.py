"""The transform's Kafka loop: a consumer group on the raw topic, manual commits.

At-least-once delivery, exactly-once effect:
- offsets are committed only after the batch's transaction has committed
  (``BatchProcessor.process`` returns only then), so a crash re-reads, never skips;
- re-reading is harmless: every record carries its version and a repeated one changes
  nothing (``repository``), and change events leave through the outbox.
Batches are processed between ``getmany`` calls, and aiokafka runs rebalance callbacks
inside ``getmany``; so when partitions are revoked nothing is in flight and there is
nothing to flush: the new owner starts from the last committed offset.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from ponte.shared import kafka
from ponte.shared.kafka import sleep_or_stop
from ponte.shared.settings import Settings
from ponte.transform.outbox import OutboxRelay
from ponte.transform.processor import UNAVAILABLE, BatchProcessor, Message

log = logging.getLogger(__name__)


class TransformConsumer:
    def __init__(
        self, settings: Settings, processor: BatchProcessor, relay: OutboxRelay | None
    ) -> None:
        self._settings = settings
        self._processor = processor
        self.relay = relay
        self.running = False
        self.batches = 0

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            self._settings.raw_topic,
            bootstrap_servers=self._settings.kafka_bootstrap,
            client_id=f"{self._settings.kafka_client_id}-transform",
            group_id=self._settings.transform_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.transform_batch_size,
        )

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await kafka.connect(self._consumer, stop, "transform consumer")
        if consumer is None:
            return
        self.running = True
        try:
            while not stop.is_set():
                batch = await consumer.getmany(
                    timeout_ms=self._settings.transform_batch_wait_ms,
                    max_records=self._settings.transform_batch_size,
                )
                if not batch:
                    continue
                messages: list[Message] = [m for records in batch.values() for m in records]
                if not await self._process_until_done(messages, stop):
                    return  # stopping mid-retry: nothing committed, the batch is re-read
                await self._publish_outbox()
                try:
                    await consumer.commit(
                        {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    )
                except CommitFailedError:
                    # Partitions moved to another member during the batch: it re-reads
                    # from the last commit, and the versions make that harmless.
                    log.warning("offset commit failed after a rebalance; batch will be re-read")
                self.batches += 1
        finally:
            self.running = False
            await consumer.stop()

    async def _process_until_done(self, messages: list[Message], stop: asyncio.Event) -> bool:
        """Apply the batch, waiting out database outages. False if asked to stop first."""
        delay = 0.5
        while True:
            try:
                await self._processor.process(messages)
                return True
            except UNAVAILABLE as error:
                log.warning(
                    "database unavailable; retrying the batch",
                    extra={"error": type(error).__name__, "retry_in_s": delay},
                )
                if await sleep_or_stop(stop, delay):
                    return False
                delay = min(delay * 2, 10.0)

    async def _publish_outbox(self) -> None:
        if self.relay is None:
            return
        try:
            await self.relay.publish_pending()
        except (KafkaError, *UNAVAILABLE) as error:
            # The messages stay in the outbox; the relay loop publishes them later.
            log.warning("outbox publish failed; will retry", extra={"error": type(error).__name__})
