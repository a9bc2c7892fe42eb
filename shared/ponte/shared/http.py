"""How Ponte's HTTP apps are served, the same in production, ``ponte dev``, tests and
benchmarks."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

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
    """uvicorn's server, exiting with status 0 after a graceful SIGTERM/SIGINT shutdown.

    uvicorn re-raises the signal it caught once it has shut down, so the process dies of
    it (status -15) even when everything was flushed and committed; a process manager
    would read that as a crash. Here the signal only starts the graceful shutdown.
    """

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
