"""The ops service: the operations API (``/ops/...``, bearer token) and the operations page
(``/``, session cookie) over what ingest, transform and deliver record in PostgreSQL.

Built by ``create_app(settings)``, nothing at import time. It holds no state of its own
beyond the database: any number of replicas can serve, and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from ponte.ops import source_metrics
from ponte.ops.errors import http_error, single_query_values
from ponte.ops.routes import audit, health, history, pages, replay, sources
from ponte.ops.status import load_schedules
from ponte.shared import db, probes, problems
from ponte.shared.ops_token import MIN_TOKEN_LENGTH, configured_token
from ponte.shared.secret_box import SecretBox
from ponte.shared.settings import Settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.secret_box = SecretBox.from_settings(settings)  # no key, no ops
    app.state.pool = await db.create_pool(settings, min_size=1, max_size=10, wait_s=60)
    app.state.pulls = load_schedules(settings.pulls_file)
    stop = asyncio.Event()
    gauges = asyncio.create_task(source_metrics.keep_fresh(app.state.pool, stop))
    try:
        yield
    finally:
        stop.set()
        await gauges
        await app.state.pool.close()


def ops_token(settings: Settings) -> str:
    """The token, refusing to serve without a real one: an ops API open to anyone who can
    reach it, or guarded by the example file's placeholder, is worse than none."""
    token = configured_token(settings)
    if not token:
        raise ValueError(
            f"PONTE_OPS_TOKEN must be set to a secret of at least {MIN_TOKEN_LENGTH} "
            "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Ponte ops",
        summary="Sources' status and settings, request history export, onboarding check, "
        "replay; and the operations page.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(single_query_values)],
    )
    app.state.settings = settings
    app.state.ops_token = ops_token(settings)
    problems.install(app)
    app.add_exception_handler(StarletteHTTPException, http_error)  # 405's Allow; 400 -> 422
    for module in (sources, history, audit, replay, pages, health):
        app.include_router(module.router)
    app.include_router(probes.router)
    return app
