"""The transform service: the raw-topic consumer, the outbox relay and the parked-reference
sweep, with a small HTTP app for probes, metrics and what is waiting or rejected."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI

from ponte.shared import db, kafka, probes, problems
from ponte.shared.crm_model import crm_model
from ponte.shared.crm_schema import ModelNotApplied, check_applied
from ponte.shared.http import freeze_startup_heap
from ponte.shared.kafka import sleep_or_stop
from ponte.shared.metrics import TRANSFORM_PARKED
from ponte.shared.settings import Settings
from ponte.transform.classification import Classifier, load_config
from ponte.transform.consumer import TransformConsumer
from ponte.transform.outbox import OutboxRelay
from ponte.transform.processor import UNAVAILABLE, BatchProcessor
from ponte.transform.routes import entities, health, mapping_check, model

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 100_000
"""Allocations between two generation-0 collections (Python's default is 700)."""


def tune_garbage_collector() -> None:
    """Freeze the start-up heap, and collect the young generation far less often.

    A batch allocates a few hundred thousand containers (rows, values, change events)
    that live until the batch ends and then die by reference counting, almost none in
    cycles. At the default threshold of 700 the collector walks them again and again,
    promoting them as it goes: with the heap frozen, that was still 11-15% of the
    transform's CPU in the benchmark (docs/benchmarks-transform.md). At 100,000 a
    collection happens a few times per batch; the garbage it may leave uncollected in the
    meantime is bounded by the same number of objects (a few MiB)."""
    freeze_startup_heap()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def _every(
    seconds: float, stop: asyncio.Event, work: Callable[[], Awaitable[object]], name: str
) -> None:
    """Run ``work`` every ``seconds`` until stopped; failures are logged and retried."""
    while not await sleep_or_stop(stop, seconds):
        try:
            await work()
        except (KafkaError, *UNAVAILABLE) as error:
            log.warning(f"{name} failed; will retry", extra={"error": type(error).__name__})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    pool = await db.create_pool(settings, min_size=2, max_size=10, wait_s=60)
    try:
        await check_applied(pool, crm_model())
    except ModelNotApplied:
        await pool.close()
        raise
    stop = asyncio.Event()
    processor = BatchProcessor(pool, settings)
    consumer = TransformConsumer(settings, processor, relay=None)
    producers: list[AIOKafkaProducer] = []
    app.state.pool = pool
    app.state.consumer = consumer

    async def count_parked() -> None:
        TRANSFORM_PARKED.set(await pool.fetchval("SELECT count(*) FROM parked_references"))

    async def run() -> None:
        producer = await kafka.connect(
            lambda: kafka.create_producer(settings), stop, "outbox producer"
        )
        if producer is None:
            return
        producers.append(producer)
        relay = consumer.relay = OutboxRelay(pool, producer)
        tasks = [
            asyncio.create_task(consumer.run(stop), name="transform-consumer"),
            asyncio.create_task(
                _every(
                    settings.outbox_relay_interval_s, stop, relay.publish_pending, "outbox relay"
                )
            ),
            asyncio.create_task(
                _every(
                    settings.parked_sweep_interval_s, stop, processor.sweep_parked, "parked sweep"
                )
            ),
            asyncio.create_task(_every(5.0, stop, count_parked, "parked count")),
        ]
        if settings.classification_enabled:
            classifier = Classifier(
                pool,
                load_config(settings.classification_file),
                processor.queue_changes,
                interval_s=settings.classification_interval_s,
                debounce_s=settings.classification_debounce_s,
            )
            processor.on_commit.append(classifier.revenue_changed)
            tasks.append(asyncio.create_task(classifier.run(stop), name="classification"))
        await asyncio.gather(*tasks)

    runner = asyncio.create_task(run(), name="transform")
    tune_garbage_collector()
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(runner, 30)
        for producer in producers:
            await producer.stop()
        await pool.close()


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Ponte transform",
        summary="Raw webhook events into the relational CRM model; what waits and what failed.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)  # every error in one shape, declared in the document
    app.include_router(health.router)
    app.include_router(probes.router)
    app.include_router(model.router)
    app.include_router(entities.router)
    app.include_router(mapping_check.router)
    return app
