"""Kafka access shared by the services: producer construction, topic creation, readiness.

The producer always waits for all in-sync replicas (``acks="all"``): a webhook is only
acknowledged once its event is durable. Idempotence is a setting because the local Tansu
broker cannot answer InitProducerId; against real Kafka it stays on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from ponte.shared.settings import Settings

log = logging.getLogger(__name__)

Client = TypeVar("Client", bound=Any)
"""An aiokafka producer or consumer (untyped library: anything with start and stop)."""
Parsed = TypeVar("Parsed")
"""One record as a service reads it (a change event, a CRM webhook event)."""
Item = TypeVar("Item")
"""What a consumer loop makes of a batch's records before applying them."""

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
"""What ``getmany`` returns: each partition's records in offset order."""


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
        TopicSpec(settings.status_topic, settings.status_topic_partitions, 7 * day),
        TopicSpec(settings.status_dead_letter_topic, 1, settings.dead_letter_retention_days * day),
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


def create_consumer(
    settings: Settings, topic: str, *, group_id: str, client: str, max_poll_records: int
) -> AIOKafkaConsumer:
    """A consumer in ``group_id`` with manual commits (``consume`` commits after each
    batch's effect, never before), starting a new group at the earliest offset so that
    nothing published before its first start is missed."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.kafka_client_id}-{client}",
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_session_timeout_ms // 3,
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


async def retry_until_done(
    work: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    what: str,
    transient: tuple[type[BaseException], ...],
) -> bool:
    """Run ``work`` until it succeeds, waiting out ``transient`` errors (a database or
    broker outage) with backoff from 0.5 s to 10 s. False if ``stop`` is set first.

    A consumer loop calls its batch's effect through this and commits only after it
    returns True: an outage delays the batch, it never skips it, and the loop (and the
    service) outlives the outage instead of ending with it."""
    delay = 0.5
    while True:
        try:
            await work()
            return True
        except transient as error:
            log.warning(
                f"{what} failed; retrying",
                extra={"error": type(error).__name__, "retry_in_s": delay},
            )
            if await sleep_or_stop(stop, delay):
                return False
            delay = min(delay * 2, 10.0)


COMMIT_TIMEOUT_S = 10.0


async def commit_batch(consumer: AIOKafkaConsumer, batch: Mapping[Any, Sequence[Any]]) -> bool:
    """Commit the offsets after a batch whose effects are recorded. A commit that fails (a
    rebalance moved the partitions, the broker is restarting) is logged, not raised: the
    batch is read again by whoever owns the partitions next, and every consumer's effects
    tolerate a repeat (versions, event ids). False when it failed."""
    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
    try:
        # aiokafka retries a retriable commit error without end (a restarted broker can
        # answer UnknownTopicOrPartition for a while): bounded, the loop goes on and a
        # shutdown is not held up; the offsets go with the next batch's commit.
        await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
    except (KafkaError, TimeoutError) as error:  # CommitFailedError included
        log.warning(
            "offset commit failed; the batch will be read again",
            extra={"error": type(error).__name__},
        )
        return False
    return True


def parse_records(
    batch: Batch,
    parse: Callable[[ConsumerRecord[bytes, bytes]], Parsed | None],
    unreadable: Callable[[ConsumerRecord[bytes, bytes]], object],
) -> list[Parsed]:
    """A batch's records parsed by ``parse(record)``, partition by
    partition in offset order. A record it cannot read (None) goes to ``unreadable``, for
    the service to log and count, and is left out: skipping it lets its batch commit,
    where holding it would stop the partition for good."""
    parsed: list[Parsed] = []
    for records in batch.values():
        for record in records:
            item = parse(record)
            if item is None:
                unreadable(record)
            else:
                parsed.append(item)
    return parsed


async def consume(
    make: Callable[[], AIOKafkaConsumer],
    stop: asyncio.Event,
    what: str,
    *,
    poll: Callable[[AIOKafkaConsumer], Awaitable[Batch]],
    parse: Callable[[Batch], Item],
    apply: Callable[[Item], Awaitable[object]],
    transient: tuple[type[BaseException], ...],
    on_running: Callable[[bool], None],
) -> None:
    """The loop every consuming service runs, until ``stop`` is set: connect (waiting for
    the broker), ``poll`` a batch, ``parse`` it once, ``apply`` it, commit its offsets.

    The rule all of them keep: **offsets are committed only after ``apply`` has returned**,
    so a crash re-reads a batch and never skips one. ``apply`` is retried in place while it
    raises one of ``transient`` (``retry_until_done``), so an outage delays a batch and the
    loop outlives it. If ``stop`` comes during those retries the loop ends with nothing
    committed, and whoever owns the partitions next reads the batch again; every service's
    effect tolerates that repeat (versions, event ids). A failed commit is only logged, for
    the same reason (``commit_batch``).

    Each service keeps its own parts: ``poll`` (deliver lingers for fuller batches),
    ``parse`` (which logs and counts records it cannot read, and leaves them out) and
    ``apply`` (the effect, and the metrics of its outcome). ``on_running`` is told True once
    the consumer is connected and False when the loop ends, for the health routes.

    Batches are applied between polls, and aiokafka runs rebalance callbacks inside
    ``getmany``; so when partitions are revoked nothing is in flight and there is nothing
    to flush: the new owner starts from the last committed offset."""
    consumer = await connect(make, stop, f"{what} consumer")
    if consumer is None:
        return
    on_running(True)
    try:
        while not stop.is_set():
            batch = await poll(consumer)
            if not batch:
                continue
            items = parse(batch)
            if not await retry_until_done(partial(apply, items), stop, f"{what} batch", transient):
                return  # stopping mid-retry: nothing committed, the batch is re-read
            await commit_batch(consumer, batch)
    finally:
        on_running(False)
        await consumer.stop()


async def broker_reachable(producer: AIOKafkaProducer, timeout_s: float = 1.0) -> bool:
    """True when the producer can fetch cluster metadata within ``timeout_s``."""
    try:
        # Resolves to whether a broker answered the metadata request just now (the cached
        # cluster view would still list a broker that has gone away).
        answered = await asyncio.wait_for(producer.client.force_metadata_update(), timeout_s)
        return bool(answered)
    except (KafkaError, OSError, TimeoutError):
        return False
