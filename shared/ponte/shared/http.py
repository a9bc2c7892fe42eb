"""How Ponte's HTTP apps are served, the same in production, ``ponte dev``, tests and
benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import Iterator
from types import FrameType

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


class PonteServer(uvicorn.Server):
    """uvicorn's server with Ponte's shutdown: drain, then stop, then exit 0.

    On SIGTERM (or Ctrl-C) the app is marked draining, so ``/readyz`` answers 503 and a
    Kubernetes Service stops routing to the pod; after ``drain_s`` uvicorn stops accepting
    connections, finishes in-flight requests, and the app's lifespan flushes and commits
    what it holds (the history queue, the producer, the consumers' current batch).
    uvicorn itself would re-raise the signal afterwards, so the process would die of it
    (status -15) even when everything was flushed; here it exits 0.
    """

    def __init__(self, config: uvicorn.Config, *, drain_s: float = 0.0) -> None:
        super().__init__(config)
        self.drain_s = drain_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        if hasattr(app, "state"):
            app.state.draining = True
        if self.drain_s > 0 and not self.should_exit:
            loop = asyncio.get_event_loop()
            loop.call_later(self.drain_s, super().handle_exit, sig, frame)
        else:
            super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {
            signum: signal.signal(signum, self.handle_exit)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for signum, handler in originals.items():
                signal.signal(signum, handler)


def draining(app: FastAPI) -> bool:
    """True once a shutdown signal arrived: readiness must fail from then on."""
    return bool(getattr(app.state, "draining", False))


def freeze_startup_heap() -> None:
    """Move everything allocated while starting (modules, models, mappings) out of the
    garbage collector's reach. Full collections walked that heap again and again: 20% of
    the transform's CPU in the benchmark, and +29% rows/s once frozen
    (docs/benchmarks-transform.md)."""
    gc.collect()
    gc.freeze()
