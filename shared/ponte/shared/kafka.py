"""Kafka access shared by the services: producer construction, topic creation, readiness.

The producer always waits for all in-sync replicas (``acks="all"``): a webhook is only
acknowledged once its event is durable. Idempotence is a setting because the local Tansu
broker cannot answer InitProducerId; against real Kafka it stays on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from ponte.shared.settings import Settings

log = logging.getLogger(__name__)

Client = TypeVar("Client", bound=Any)
"""An aiokafka producer or consumer (untyped library: anything with start and stop)."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic Ponte uses, with what it needs created (the K8s KafkaTopic mirrors this)."""

    name: str
    partitions: int
    retention_ms: int


def topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the code uses. ``deploy/k8s`` declares one KafkaTopic for each."""
    day = 24 * 3600 * 1000
    return [
        TopicSpec(settings.raw_topic, settings.raw_topic_partitions, 7 * day),
        TopicSpec(settings.changes_topic, settings.changes_topic_partitions, 7 * day),
        TopicSpec(
            settings.transform_dead_letter_topic, 1, settings.dead_letter_retention_days * day
        ),
        TopicSpec(settings.deliver_dead_letter_topic, 1, settings.dead_letter_retention_days * day),
    ]


def create_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.kafka_client_id}-producer",
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=settings.produce_linger_ms,
        request_timeout_ms=int(settings.produce_timeout_s * 1000),
        # Ask for fresh metadata soon after a broker comes back.
        retry_backoff_ms=100,
        metadata_max_age_ms=30_000,
        max_request_size=settings.max_body_bytes * 2 + 1024 * 1024,
    )


async def ensure_topics(settings: Settings, specs: Iterable[TopicSpec] | None = None) -> None:
    """Create the topics that do not exist yet. Safe to run at every start."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.kafka_client_id}-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=settings.kafka_replication_factor,
                topic_configs={"retention.ms": str(spec.retention_ms)},
            )
            for spec in (specs if specs is not None else topics(settings))
            if spec.name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another replica won the race
            log.info("created topics", extra={"topics": [t.name for t in missing]})
    finally:
        await admin.close()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or return True as soon as ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def connect(make: Callable[[], Client], stop: asyncio.Event, what: str) -> Client | None:
    """Start a fresh client (producer or consumer) until the broker answers, backing off
    from 0.2 s to 5 s; None if ``stop`` is set first. Services start, and answer their
    probes, while the broker is still away."""
    delay = 0.2
    while not stop.is_set():
        client = make()
        try:
            await client.start()
            return client
        except (KafkaError, OSError) as error:
            with contextlib.suppress(Exception):
                await client.stop()
            log.warning(
                "broker not reachable yet",
                extra={"client": what, "error": type(error).__name__, "retry_in_s": delay},
            )
            await sleep_or_stop(stop, delay)
            delay = min(delay * 2, 5.0)
    return None


async def broker_reachable(producer: AIOKafkaProducer, timeout_s: float = 1.0) -> bool:
    """True when the producer can fetch cluster metadata within ``timeout_s``."""
    try:
        # Resolves to whether a broker answered the metadata request just now (the cached
        # cluster view would still list a broker that has gone away).
        answered = await asyncio.wait_for(producer.client.force_metadata_update(), timeout_s)
        return bool(answered)
    except (KafkaError, OSError, TimeoutError):
        return False
