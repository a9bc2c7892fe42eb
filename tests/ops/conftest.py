"""The ops service served in-process over real HTTP, next to a real ingest, against the
session's PostgreSQL and broker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ponte.shared.settings import Settings
from ponte.shared.signatures import sign_standard
from tests.conftest import RunningIngest, serve_ingest, write_sources
from tests.eventually import eventually
from tests.stand_ins.serve import serve

OPS_TOKEN = "ops-test-token-" + "x" * 24
SECRET = "erp-secret-for-ops-tests-0001"


@dataclass
class RunningOps:
    url: str
    settings: Settings

    def client(self, token: str | None = OPS_TOKEN, **headers: str) -> httpx.AsyncClient:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


async def serve_ops(settings: Settings) -> AsyncIterator[RunningOps]:
    """The real ops app over real HTTP (uvicorn) inside the test's event loop."""
    from ponte.ops.app import create_app

    async with serve(create_app(settings)) as url:
        yield RunningOps(url, settings)


def erp_source(source_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": source_id,
        "kind": "erp",
        "display_name": f"ERP {source_id}",
        "erp_name": "Sankhya",
        "erp_version": "4.2",
        "secrets": [SECRET],
        **extra,
    }


@pytest.fixture
def source_id() -> str:
    return f"ops-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def ingest(
    settings: Settings, source_id: str, tmp_path: Path
) -> AsyncIterator[RunningIngest]:
    """A real ingest with one ERP source of this test's own (and the session's quick
    source refresh, 0.5 s)."""
    sources = write_sources(tmp_path / "sources.yaml", [erp_source(source_id)])
    async for running in serve_ingest(settings.model_copy(update={"sources_file": sources})):
        yield running


@pytest.fixture
async def ops(settings: Settings) -> AsyncIterator[RunningOps]:
    from pydantic import SecretStr

    async for running in serve_ops(settings.model_copy(update={"ops_token": SecretStr(OPS_TOKEN)})):
        yield running


def envelope(table: str = "Pedido", rows: int = 1) -> dict[str, Any]:
    return {
        "id": f"evt-{uuid.uuid4().hex}",
        "occurred_at": "2024-11-14T12:01:32-03:00",
        "operation": "upsert",
        "table": table,
        "rows": [{"codigo": f"{table[:3].upper()}-{uuid.uuid4().hex[:6]}"} for _ in range(rows)],
    }


async def send_webhook(
    ingest: RunningIngest, source_id: str, body: dict[str, Any], secret: str = SECRET
) -> httpx.Response:
    """A webhook signed the Standard Webhooks way, as an ERP sends it."""
    raw = json.dumps(body).encode()
    webhook_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            ingest.webhook(source_id),
            content=raw,
            headers={
                "content-type": "application/json",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign_standard(secret, webhook_id, timestamp, raw),
            },
        )


async def wait_for_history(
    pool: asyncpg.Pool, source_id: str, count: int, timeout_s: float = 10
) -> None:
    """Ingest writes history in the background: wait until ``count`` rows are in."""
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) FROM webhook_requests WHERE source_id = $1", source_id
        ),
        satisfied=lambda found: found >= count,
        timeout_s=timeout_s,
        message=f"{count} history rows for {source_id}",
    )
