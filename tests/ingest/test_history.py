"""The request history writer (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

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
        "SELECT received_at, body, body_sha256, response_body FROM webhook_requests "
        "WHERE source_id = $1 AND received_at > $2 ORDER BY id",
        source_id,
        now - timedelta(days=1),
    )
    assert len(rows) == 2
    assert rows[0]["body"] == b"{}" and rows[0]["response_body"] == {"event_id": "evt_x"}
    assert rows[1]["body"] is None and rows[1]["body_sha256"] is not None  # digest only

    # The writer prunes on its own (at start, then hourly); after a prune only rows inside
    # the retention period are left.
    await writer.prune()
    remaining = await pool.fetch(
        "SELECT received_at FROM webhook_requests WHERE source_id = $1", source_id
    )
    assert len(remaining) == 2
    assert all(row["received_at"] > now - timedelta(days=30) for row in remaining)


async def test_full_queue_drops_history_without_blocking(
    pool: asyncpg.Pool, base_settings: Settings
) -> None:
    dropped_before = REGISTRY.get_sample_value("ponte_history_rows_dropped_total") or 0.0
    writer = HistoryWriter(pool, base_settings.model_copy(update={"history_queue_max": 2}))
    for _ in range(5):  # not started: nothing drains the queue
        writer.record(entry("hist-full", datetime.now(UTC)))
    dropped = REGISTRY.get_sample_value("ponte_history_rows_dropped_total")
    assert dropped == dropped_before + 3


async def test_a_steady_trickle_is_written_once_per_flush_interval(
    pool: asyncpg.Pool, base_settings: Settings
) -> None:
    """Rows arriving one by one (a steady moderate rate) share one COPY per flush
    interval instead of one COPY each, and every one of them is written."""
    source_id = f"hist-{uuid.uuid4().hex[:8]}"
    settings = base_settings.model_copy(update={"history_flush_interval_s": 0.2})
    copies: list[int] = []

    class CountingWriter(HistoryWriter):
        async def _copy(self, records: list[tuple[Any, ...]]) -> None:
            copies.append(len(records))
            await super()._copy(records)

    writer = CountingWriter(pool, settings)
    await writer.start()
    started = time.monotonic()
    for _ in range(60):  # 60 rows over ~0.6 s: 3 flush intervals
        writer.record(entry(source_id, datetime.now(UTC)))
        await asyncio.sleep(0.01)  # the scenario: one row every 10 ms
    elapsed = time.monotonic() - started
    await writer.stop()

    count = await pool.fetchval(
        "SELECT count(*) FROM webhook_requests WHERE source_id = $1", source_id
    )
    assert count == 60 and sum(copies) == 60
    assert len(copies) <= elapsed / 0.2 + 2  # one per interval, plus the first and the last


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"source_event_id": "evt\x00x"}, "NUL in a text column"),
        ({"tables": ["Ped\x00ido"]}, "NUL in the tables array"),
        ({"response_body": {"message": "X\x00Y"}}, "NUL in the JSONB answer"),
        ({"response_body": {"message": "a\ud800"}}, "lone surrogate in the JSONB answer"),
        ({"source_event_id": "a\udc00", "client_ip": "not an address"}, "unencodable text"),
        ({"content_type": "application/json\ud800"}, "lone surrogate in a header"),
    ],
    ids=["nul-text", "nul-array", "nul-jsonb", "surrogate-jsonb", "surrogate-text", "header"],
)
async def test_a_row_the_database_refuses_is_written_sanitised(
    pool: asyncpg.Pool, base_settings: Settings, change: dict[str, Any], what: str
) -> None:
    """Every request is recorded: a value PostgreSQL cannot store makes a sanitised row
    (what it cannot hold replaced, the rest as it was), never no row; and the other rows
    of the batch are written as they are."""
    source_id = f"hist-{uuid.uuid4().hex[:8]}"
    writer = HistoryWriter(pool, base_settings)
    await writer.start()
    now = datetime.now(UTC)
    bad = entry(source_id, now)
    for name, value in change.items():
        setattr(bad, name, value)
    writer.record(entry(source_id, now))
    writer.record(bad)
    writer.record(entry(source_id, now))
    await writer.stop()

    rows = await pool.fetch(
        "SELECT * FROM webhook_requests WHERE source_id = $1 ORDER BY id", source_id
    )
    assert len(rows) == 3, what
    sanitised = [row for row in rows if "history_sanitised" in row["response_body"]]
    assert len(sanitised) == 1, [dict(row) for row in rows]
    row = sanitised[0]
    assert row["status_code"] == 202 and row["body"] == b"{}"
    # What could not be stored is shown escaped (six characters such as \u0000).
    text = json.dumps(dict(row), default=str, ensure_ascii=False)
    assert "\\\\u0000" in text or "\\\\ud800" in text or "\\\\udc00" in text, text
