"""The deliver service: the changes consumer, one connector per target, probes, metrics
and the delivery state per record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import httpx
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ponte.deliver.connectors.base import Connector
from ponte.deliver.connectors.registry import build_connector, load_targets
from ponte.deliver.consumer import DeliverConsumer
from ponte.deliver.engine import Deliverer
from ponte.deliver.keylock import KEY_LOCK_CONNECTIONS
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.status_back.config import load_config
from ponte.deliver.status_back.route import router as status_back_router
from ponte.deliver.status_back.service import StatusBack
from ponte.deliver.targets import Target
from ponte.shared import db, kafka, probes, problems
from ponte.shared.deps import PoolDep
from ponte.shared.http import draining, freeze_startup_heap
from ponte.shared.ops_token import UNAUTHORIZED as OPS_TOKEN_MISSING
from ponte.shared.ops_token import OpsTokenRequired
from ponte.shared.probes import READINESS_RESPONSES, IdQuery
from ponte.shared.settings import Settings

router = APIRouter()


def build_connectors(
    targets: list[Target], settings: Settings, key_lock_pool: asyncpg.Pool | None = None
) -> tuple[dict[str, tuple[Target, Connector]], list[httpx.AsyncClient]]:
    """One connector per target; ``key_lock_pool``: see ``connectors.build_connector``."""
    connectors: dict[str, tuple[Target, Connector]] = {}
    clients = []
    for target in targets:
        client = httpx.AsyncClient(base_url=target.base_url, timeout=settings.deliver_timeout_s)
        clients.append(client)
        bucket = TokenBucket(target.rate_limit.requests, target.rate_limit.per_seconds)
        connector = build_connector(target, client, bucket, key_lock_pool)
        connectors[target.id] = (target, connector)
    return connectors, clients


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    targets = load_targets(settings.targets_file) if settings.targets_file else []
    status_config = load_config(settings.targets_file)  # invalid: fail before waiting
    pool = await db.create_pool(settings, wait_s=60)
    stop = asyncio.Event()
    # Without the broker there is nothing to deliver: wait for it before serving.
    producer = await kafka.connect(
        lambda: kafka.create_producer(settings), stop, "dead-letter producer"
    )
    assert producer is not None  # stop is never set before the broker answers
    # Lookup-then-write connectors hold a connection per record being written: a pool of
    # their own, so CRM calls never starve the bookkeeping (ponte.deliver.keylock).
    key_lock_pool = await db.create_pool(settings, min_size=0, max_size=KEY_LOCK_CONNECTIONS)
    connectors, clients = build_connectors(targets, settings, key_lock_pool)
    consumer = DeliverConsumer(settings, Deliverer(settings, pool, producer, connectors))
    app.state.pool, app.state.consumer = pool, consumer
    task = asyncio.create_task(consumer.run(stop))
    # CRM webhooks -> the origin's status (docs/status-back.md): same producer and stop.
    status_back = StatusBack(settings, pool, producer, status_config)
    app.state.status_back = status_back
    status_task = asyncio.create_task(status_back.run(stop))
    freeze_startup_heap()
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(status_task, 60)
        await status_back.aclose()
        for client in clients:
            await client.aclose()
        await producer.stop()
        await key_lock_pool.close()
        await pool.close()


class DeliveryState(BaseModel):
    target_id: str
    entity: str
    source_id: str
    source_key: str
    row_id: int | None
    crm_id: str | None
    state: str
    version_at: datetime | None
    version_event_id: str | None
    version_seq: int | None = None
    attempts: int
    last_error: str | None
    updated_at: datetime


@router.get(
    "/deliveries",
    tags=["deliver"],
    summary="Delivery state per record and target",
    dependencies=[OpsTokenRequired],
    responses=OPS_TOKEN_MISSING,
)
async def deliveries(
    pool: PoolDep,
    target_id: IdQuery = None,
    state: IdQuery = None,
    source_id: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    where = (
        "WHERE ($1::text IS NULL OR target_id = $1) AND ($2::text IS NULL OR state = $2) "
        "AND ($3::text IS NULL OR source_id = $3)"
    )
    count = await pool.fetchval(
        f"SELECT count(*) FROM deliveries {where}",  # noqa: S608
        target_id,
        state,
        source_id,
    )
    rows = await pool.fetch(
        f"SELECT * FROM deliveries {where} ORDER BY updated_at DESC "  # noqa: S608
        "LIMIT $4",
        target_id,
        state,
        source_id,
        limit,
    )
    return {"count": count, "items": [DeliveryState(**dict(row)) for row in rows]}


@router.get("/readyz", tags=["health"], responses=READINESS_RESPONSES)
async def readyz(request: Request, pool: PoolDep) -> JSONResponse:
    checks = {
        "consumer": request.app.state.consumer.running,
        "database": await db.ping(pool),
        "not_draining": not draining(request.app),
    }
    return probes.readiness(checks)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Ponte deliver",
        version="0.1.0",
        lifespan=lifespan,
        summary="Committed CRM changes out to CRM APIs; what was delivered, what failed.",
    )
    app.state.settings = settings
    problems.install(app)  # every error in one shape, declared in the document
    app.include_router(router)
    app.include_router(status_back_router)
    app.include_router(probes.router)
    return app
