"""The request history writer (real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ponte.ingest.history import HistoryEntry, HistoryWriter
from ponte.shared.settings import Settings

pytestmark = pytest.mark.integration


def entry(source_id: str, received_at: datetime, body: bytes | None = b"{}") -> HistoryEntry:
    return HistoryEntry(
        received_at=received_at,
        source_id=source_id,
        outcome="accepted",
        status_code=202,
        response_body={"event_id": "evt_x"},
        latency_ms=1.5,
        size_bytes=2,
        tables=["Pedido"],
        body=body,
    )


async def test_rows_are_flushed_on_stop_and_pruned_after_retention(
    pool: asyncpg.Pool, base_settings: Settings
) -> None:
    source_id = f"hist-{uuid.uuid4().hex[:8]}"
    settings = base_settings.model_copy(
        update={"history_retention_days": 30, "history_keep_body_bytes": 4}
    )
    writer = HistoryWriter(pool, settings)
    await writer.start()
    now = datetime.now(UTC)
    writer.record(entry(source_id, now - timedelta(days=31)))
    writer.record(entry(source_id, now))
    writer.record(entry(source_id, now, body=b"too large to keep"))
    await writer.stop()

    rows = await pool.fetch(
        "SELECT received_at, body, body_sha256, response_body FROM "
        "webhook_requests WHERE source_id = $1 ORDER BY id",
        source_id,
    )
    assert len(rows) == 3
    assert rows[1]["body"] == b"{}" and rows[1]["response_body"] == {"event_id": "evt_x"}
    assert rows[2]["body"] is None and rows[2]["body_sha256"] is not None  # digest only

    assert await writer.prune() >= 1
    remaining = await pool.fetchval(
        "SELECT count(*) FROM webhook_requests WHERE source_id = $1", source_id
    )
    assert remaining == 2


async def test_full_queue_drops_history_without_blocking(
    pool: asyncpg.Pool, base_settings: Settings
) -> None:
    dropped_before = REGISTRY.get_sample_value("ponte_history_rows_dropped_total") or 0.0
    writer = HistoryWriter(pool, base_settings.model_copy(update={"history_queue_max": 2}))
    for _ in range(5):  # not started: nothing drains the queue
        writer.record(entry("hist-full", datetime.now(UTC)))
    dropped = REGISTRY.get_sample_value("ponte_history_rows_dropped_total")
    assert dropped == dropped_before + 3
