"""How Ponte's HTTP apps are served, the same in production, ``ponte dev``, tests and
benchmarks."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI


def server_config(app: FastAPI, *, host: str, port: int) -> uvicorn.Config:
    """A uvicorn config for one of Ponte's apps.

    ``proxy_headers=False``: uvicorn would otherwise replace the peer address with
    X-Forwarded-For whenever the peer is 127.0.0.1, which would let a forged header past a
    source's allowlist. Ponte reads X-Forwarded-For itself, per source's trusted proxies
    (``ponte.ingest.addresses``).
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        lifespan="on",
    )
