"""Writing record events to the raw topic, and knowing when the broker has them.

``publish`` returns only when the broker has acknowledged every event of a delivery
(``acks="all"``), or raises ``BrokerUnavailable`` within ``produce_timeout_s``; the route
turns that into 503 + Retry-After, never a 2xx. If the broker is down when ingest starts,
the producer keeps trying to connect in the background and ingest answers 503 meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ponte.shared import kafka
from ponte.shared.events import (
    HEADER_EVENT_ID,
    HEADER_KIND,
    HEADER_SOURCE,
    HEADER_TOPIC,
    RawEvent,
)
from ponte.shared.metrics import KAFKA_PRODUCE_ERRORS, KAFKA_PRODUCE_LATENCY
from ponte.shared.partitioner import partition_for
from ponte.shared.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time; the delivery must not be acknowledged."""


def headers_for(event: RawEvent, content_type: str | None) -> list[tuple[str, bytes]]:
    """Kafka headers, so a consumer or a person with kcat can route without parsing."""
    headers = [
        (HEADER_EVENT_ID, event.event_id.encode()),
        (HEADER_SOURCE, event.source_id.encode()),
        (HEADER_KIND, event.source_kind.value.encode()),
        (HEADER_TOPIC, event.topic.encode()),
        ("ponte-received-at", event.received_at.isoformat().encode()),
        ("content-type", b"application/json"),
    ]
    if content_type:
        headers.append(("ponte-original-content-type", content_type.encode()))
    return headers


_ENCODE_OPTIONS = orjson.OPT_UTC_Z
"""pydantic writes UTC as ``Z``; every other choice of orjson's defaults matches it."""


def encode_event(event: RawEvent) -> bytes:
    """``event.model_dump_json()``, byte for byte, at a fraction of its CPU.

    The fields are read straight off the validated model and written by orjson; a value
    orjson refuses (an integer wider than 64 bits, a lone surrogate in a string, both
    legal in Python's JSON) falls back to pydantic, so nothing that pydantic could write
    is refused. ``test_publisher.py`` compares both encodings on awkward events."""
    fields: dict[str, Any] = {
        "schema_version": event.schema_version,
        "event_id": event.event_id,
        "delivery_id": event.delivery_id,
        "index": event.index,
        "count": event.count,
        "source_id": event.source_id,
        "source_kind": event.source_kind.value,
        "source_event_id": event.source_event_id,
        "topic": event.topic,
        "operation": event.operation.value,
        "record_key": event.record_key,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "payload": event.payload,
    }
    try:
        return orjson.dumps(fields, option=_ENCODE_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return event.model_dump_json().encode()


class EventPublisher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self._stopping = asyncio.Event()
        self._partitions: dict[str, list[int]] = {}
        """Each topic's partition ids, sorted, as of the producer's last metadata update."""

    async def start(self) -> None:
        """Connect in the background; ingest serves (503) until the broker answers."""
        self._connector = asyncio.create_task(self._connect_forever(), name="producer-connect")

    async def _connect_forever(self) -> None:
        producer = await kafka.connect(
            lambda: kafka.create_producer(self._settings), self._stopping, "producer"
        )
        if producer is None:
            return
        # Forget the partition lists whenever the metadata changes (aiokafka calls its
        # listeners on every update), so a topic that grows is seen as aiokafka sees it.
        producer.client.cluster.add_listener(self._metadata_updated)
        self._producer = producer
        self.started.set()
        log.info("producer connected", extra={"bootstrap": self._settings.kafka_bootstrap})

    async def stop(self) -> None:
        self._stopping.set()
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            # Flushes what is in flight; anything not acked was not answered 2xx either.
            await self._producer.stop()

    async def ready(self) -> bool:
        if self._producer is None:
            return False
        return await kafka.broker_reachable(self._producer)

    async def publish(self, events: list[RawEvent], content_type: str | None) -> None:
        """Write the events and wait for every acknowledgement, or raise BrokerUnavailable."""
        if self._producer is None:
            KAFKA_PRODUCE_ERRORS.labels("not_connected").inc()
            raise BrokerUnavailable("the broker has not been reachable since ingest started")
        started = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: no extra task per request.
            async with asyncio.timeout(self._settings.produce_timeout_s):
                await self._send_all(self._producer, events, content_type)
        except TimeoutError:
            KAFKA_PRODUCE_ERRORS.labels("timeout").inc()
            raise BrokerUnavailable(
                f"the broker did not acknowledge within {self._settings.produce_timeout_s}s"
            ) from None
        except KafkaError as error:
            KAFKA_PRODUCE_ERRORS.labels(type(error).__name__).inc()
            raise BrokerUnavailable(
                f"the broker refused the write ({type(error).__name__})"
            ) from None
        KAFKA_PRODUCE_LATENCY.observe(time.perf_counter() - started)

    def _metadata_updated(self, cluster: object) -> None:
        self._partitions.clear()

    def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> list[int] | None:
        """The topic's partitions, sorted: built once per metadata update, not per send
        (``partitions_for_topic`` copies them into a new set on every call)."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            known = producer.client.cluster.partitions_for_topic(topic)
            if not known:
                return None
            partitions = self._partitions[topic] = sorted(known)
        return partitions

    async def _send_all(
        self, producer: AIOKafkaProducer, events: list[RawEvent], content_type: str | None
    ) -> None:
        topic = self._settings.raw_topic
        # Java's default partitioner, computed here (ponte.shared.partitioner): the same
        # partition aiokafka would pick, without its pure-Python hash on every send. Until
        # the producer has the topic's metadata, aiokafka picks (the same way).
        partitions = self._partitions_of(producer, topic)
        acks = []
        for event in events:
            key = event.partition_key
            acks.append(
                await producer.send(
                    topic,
                    value=encode_event(event),
                    key=key,
                    partition=partition_for(key, partitions) if partitions else None,
                    headers=headers_for(event, content_type),
                )
            )
        # On our timeout the producer's own futures must not be cancelled under it (it
        # resolves them later, and a late ack is harmless: the event id is deterministic
        # and the transform drops the duplicate): shield for one event, wait for many.
        if len(acks) == 1:
            await asyncio.shield(acks[0])  # raises its KafkaError
            return
        done, _ = await asyncio.wait(acks)
        for ack in done:
            ack.result()  # raises the first KafkaError
