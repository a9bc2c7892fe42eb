"""The ingest FastAPI application: built by ``create_app(settings)``, nothing at import time.

The lifespan opens the database pool, applies the sources file, starts the producer (which
keeps reconnecting in the background if the broker is down), the source refresher and the
history writer, and stops them in reverse order so queued history is flushed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ponte.ingest.history import HistoryWriter
from ponte.ingest.intake import Intake
from ponte.ingest.publisher import EventPublisher
from ponte.ingest.pulls.scheduler import build_scheduler
from ponte.ingest.receipts import Receipts
from ponte.ingest.registry import SourceRegistry
from ponte.ingest.routes import health, intake_files, webhooks
from ponte.shared import db, probes
from ponte.shared.http import freeze_startup_heap
from ponte.shared.settings import Settings
from ponte.shared.sources import apply_sources, load_sources_file

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    pool = await db.create_pool(settings, min_size=2, max_size=20, wait_s=60)
    if settings.sources_file is not None:
        await apply_sources(pool, load_sources_file(settings.sources_file))
    registry = SourceRegistry(
        pool, refresh_s=settings.sources_refresh_s, default_proxies=settings.trusted_proxies
    )
    publisher = EventPublisher(settings)
    history = HistoryWriter(pool, settings)
    receipts = Receipts(pool, pending_timeout_s=settings.dedup_pending_timeout_s)
    await registry.start()
    await publisher.start()
    await history.start()
    app.state.pool = pool
    app.state.publisher = publisher
    app.state.intake = Intake(settings, registry, publisher, receipts, history)
    app.state.registry = registry
    app.state.pulls = await build_scheduler(settings, pool, publisher)
    await app.state.pulls.start()
    freeze_startup_heap()
    try:
        yield
    finally:
        await app.state.pulls.stop()
        await publisher.stop()
        await receipts.flush()
        await history.stop()
        await registry.stop()
        await pool.close()


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Ponte ingest",
        summary="Signed webhooks from ERPs and shops, acknowledged once Kafka has them.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Starlette matches routes in order: the plain route serves, the FastAPI one documents.
    app.router.routes.append(webhooks.FAST_ROUTE)
    app.include_router(webhooks.router)
    app.include_router(intake_files.router)
    app.include_router(health.router)
    app.include_router(probes.router)
    return app
