"""The transform service: the raw-topic consumer, the outbox relay and the parked-reference
sweep, with a small HTTP app for probes, metrics and what is waiting or rejected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI

from ponte.shared import db, kafka, probes
from ponte.shared.http import freeze_startup_heap
from ponte.shared.metrics import TRANSFORM_PARKED
from ponte.shared.settings import Settings
from ponte.transform.consumer import TransformConsumer, sleep_or_stop
from ponte.transform.outbox import OutboxRelay
from ponte.transform.processor import UNAVAILABLE, BatchProcessor
from ponte.transform.routes import health, model

log = logging.getLogger(__name__)


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
    producer = kafka.create_producer(settings)
    stop = asyncio.Event()
    processor = BatchProcessor(pool, settings)
    relay = OutboxRelay(pool, producer)
    consumer = TransformConsumer(settings, processor, relay)
    app.state.pool = pool
    app.state.consumer = consumer

    async def count_parked() -> None:
        TRANSFORM_PARKED.set(await pool.fetchval("SELECT count(*) FROM parked_references"))

    async def run() -> None:
        await _start_producer(producer, stop)
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
        await asyncio.gather(*tasks)

    runner = asyncio.create_task(run(), name="transform")
    freeze_startup_heap()
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(runner, 30)
        await producer.stop()
        await pool.close()


async def _start_producer(producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
    delay = 0.2
    while not stop.is_set():
        try:
            await producer.start()
            return
        except (KafkaError, OSError) as error:
            log.warning("broker not reachable yet", extra={"error": type(error).__name__})
            await sleep_or_stop(stop, delay)
            delay = min(delay * 2, 5.0)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Ponte transform",
        summary="Raw webhook events into the relational CRM model; what waits and what failed.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(probes.router)
    app.include_router(model.router)
    return app
