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
from starlette.types import Receive, Scope, Send

from ponte.ingest.history import HistoryWriter
from ponte.ingest.intake import Intake
from ponte.ingest.publisher import EventPublisher
from ponte.ingest.pulls.scheduler import build_scheduler
from ponte.ingest.receipts import Receipts
from ponte.ingest.registry import SourceRegistry
from ponte.ingest.routes import health, intake_files, webhooks
from ponte.shared import db, probes, problems
from ponte.shared.http import freeze_startup_heap
from ponte.shared.secret_box import SecretBox
from ponte.shared.settings import Settings
from ponte.shared.sources import apply_sources, load_sources_file

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    box = SecretBox.from_settings(settings)  # no key, no ingest: secrets stay encrypted
    pool = await db.create_pool(settings, min_size=2, max_size=20, wait_s=60)
    if settings.sources_file is not None:
        await apply_sources(pool, load_sources_file(settings.sources_file), box)
    registry = SourceRegistry(
        pool, box, refresh_s=settings.sources_refresh_s, default_proxies=settings.trusted_proxies
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
    if isinstance(app, IngestApp):
        app.webhook_intake = app.state.intake
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


class IngestApp(FastAPI):
    """FastAPI, except that webhook deliveries skip its middleware stack and router.

    ``POST /webhooks/{source_id}`` is the one hot path, and the framework around it cost
    more CPU than the webhook's own work (docs/benchmarks.md): it is dispatched here to a
    plain ASGI handler. Every other request (probes, metrics, file drops, the OpenAPI
    document) is served by FastAPI as usual."""

    webhook_intake: Intake | None = None
    """Set by the lifespan once intake is ready: a plain attribute, since reading
    ``app.state`` (Starlette's ``State.__getattr__``) on every request was measurable."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        intake = self.webhook_intake
        source_id = webhooks.webhook_source(scope) if intake is not None else None
        if source_id is None or intake is None:
            await super().__call__(scope, receive, send)
            return
        await webhooks.serve_webhook(intake, source_id, scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    app = IngestApp(
        title="Ponte ingest",
        summary="Signed webhooks from ERPs and shops, acknowledged once Kafka has them.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)  # every error in one shape, declared in the document
    app.include_router(webhooks.router)
    app.include_router(intake_files.router)
    app.include_router(health.router)
    app.include_router(probes.router)
    return app
