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
from ponte.transform.processor import UNAVAILABLE, BatchProcessor, BatchSummary, Message

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
        self._publishing: asyncio.Task[None] | None = None

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
        try:
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
        finally:
            # The last batch's change events go out before the loop ends (or stay in the
            # outbox for the relay loop, if that fails or is cancelled).
            await self._publish_wait()

    def _set_running(self, running: bool) -> None:
        self.running = running

    async def _poll(self, consumer: AIOKafkaConsumer) -> kafka.Batch:
        batch: kafka.Batch = await consumer.getmany(
            timeout_ms=self._settings.transform_batch_wait_ms,
            max_records=self._settings.transform_batch_size,
        )
        return batch

    async def _apply(self, messages: list[Message]) -> None:
        """The batch in one transaction; then its change events leave the outbox while the
        next batch is decoded and applied.

        Publishing is pipelined one batch deep: batch N's events are produced while batch
        N+1's transaction runs, and batch N+1's publish starts only once batch N's has
        finished, so the relay still publishes in outbox order. None of the rules move:
        the offsets of a batch are committed once its transaction has (its events are in
        the outbox by then, durable), and events are published only after that commit. A
        failed publish is not retried here (it never raises): the messages stay in the
        outbox and the relay loop publishes them, in order, before any newer ones."""
        summary = await self._processor.process(messages)
        await self._publish_wait()
        if self.relay is not None and summary.outbox:
            self._publishing = asyncio.create_task(
                self._publish(self.relay, summary), name="transform-outbox-publish"
            )
        self.batches += 1

    async def _publish_wait(self) -> None:
        """Wait for the previous batch's publish, if one is still going."""
        if self._publishing is not None:
            publishing, self._publishing = self._publishing, None
            await publishing

    async def _publish(self, relay: OutboxRelay, summary: BatchSummary) -> None:
        written, summary.outbox = summary.outbox, []
        try:
            await relay.publish_committed(written)
        except (KafkaError, *UNAVAILABLE) as error:
            # The messages stay in the outbox; the relay loop publishes them later.
            log.warning("outbox publish failed; will retry", extra={"error": type(error).__name__})
