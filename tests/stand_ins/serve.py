"""Serve an ASGI app over real HTTP on a free loopback port, inside the test's own event
loop: the stand-in CRMs and ERPs, and Ponte's own apps (ingest, ops) when a test drives
them over the wire.

In-process rather than a subprocess so a test can read and steer the stand-in's state
directly (``state.fail_next = [503]``), and on a real socket rather than an ASGI
transport so the connectors' HTTP clients, timeouts and retries run exactly as in
production. The config is Ponte's own (``ponte.shared.http.server_config``), so the
apps under test run with their production lifespan and proxy-header handling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from ponte.shared.embedded import free_port
from ponte.shared.http import server_config
from tests.eventually import eventually

STARTUP_POLL_S = 0.02
STARTUP_TIMEOUT_S = 30.0


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1 for the block; yields its base URL.

    Waits until uvicorn says it is listening, so the first request never races the
    bind. If the server dies while starting (a lifespan error, the port taken after all)
    its exception is raised here rather than the wait spinning forever. On exit the server
    is asked to stop and awaited, so its lifespan shutdown runs before the test ends."""
    port = free_port()
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port))
    task = asyncio.create_task(server.serve())
    await eventually(
        lambda: server.started,
        timeout_s=STARTUP_TIMEOUT_S,
        interval_s=STARTUP_POLL_S,
        task=task,  # what stopped it is raised here, not waited out
        message=f"{app.title} to listen on port {port}",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
