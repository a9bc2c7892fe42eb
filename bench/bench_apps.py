"""The two ASGI apps the benchmark serves, as ``uvicorn --factory`` targets.

Each runs in its own uvicorn process, started the same way by ``bench/ingest.py``, so the
only difference between the two measurements is the application:

- ``ingest_app``: the real ingest service, configured from ``PONTE_*`` environment
  variables exactly as ``ponte ingest`` is (JSON logging included), minus any ``.env``
  file in the working directory, so a developer's local settings cannot skew a run.
- ``bare_app``: the floor. One POST route at the same path answering 202 ``{"ok": true}``
  without reading the body: what uvicorn + FastAPI cost on this machine with no work.
"""

from __future__ import annotations

from fastapi import FastAPI

from ponte.shared.logs import configure_logging
from ponte.shared.settings import Settings


def ingest_app() -> FastAPI:
    from ponte.ingest.app import create_app

    settings = Settings(_env_file=None)
    configure_logging(settings.log_level)
    return create_app(settings)


def bare_app() -> FastAPI:
    app = FastAPI(title="bare baseline")

    @app.post("/webhooks/{source_id}", status_code=202)
    async def receive(source_id: str) -> dict[str, bool]:
        return {"ok": True}

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app
