"""The transform's Kafka loop: a consumer group on the raw topic, manual commits.

At-least-once delivery, exactly-once effect:
- offsets are committed only after the batch's transaction has committed
  (``BatchProcessor.process`` returns only then), so a crash re-reads, never skips;
- re-reading is harmless: every record carries its version and a repeated one changes
  nothing (``repository``), and change events leave through the outbox.
The loop itself (connect, poll, retry through outages, commit, rebalances) is
``ponte.shared.kafka.consume``, shared with the deliver service's two consumers.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from ponte.shared import kafka
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
        return kafka.create_consumer(
            self._settings,
            self._settings.raw_topic,
            group_id=self._settings.transform_group_id,
            client="transform",
            max_poll_records=self._settings.transform_batch_size,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; offsets committed after each batch's transaction."""
        await kafka.consume(
            self._consumer,
            stop,
            "transform",
            poll=self._poll,
            parse=lambda batch: [m for records in batch.values() for m in records],
            apply=self._apply,
            transient=UNAVAILABLE,
            on_running=self._set_running,
        )

    def _set_running(self, running: bool) -> None:
        self.running = running

    async def _poll(self, consumer: AIOKafkaConsumer) -> kafka.Batch:
        batch: kafka.Batch = await consumer.getmany(
            timeout_ms=self._settings.transform_batch_wait_ms,
            max_records=self._settings.transform_batch_size,
        )
        return batch

    async def _apply(self, messages: list[Message]) -> None:
        """The batch in one transaction, then its change events out of the outbox. A failed
        publish is not retried here (it never raises): the relay loop publishes later."""
        await self._processor.process(messages)
        await self._publish_outbox()
        self.batches += 1

    async def _publish_outbox(self) -> None:
        if self.relay is None:
            return
        try:
            await self.relay.publish_pending()
        except (KafkaError, *UNAVAILABLE) as error:
            # The messages stay in the outbox; the relay loop publishes them later.
            log.warning("outbox publish failed; will retry", extra={"error": type(error).__name__})
