"""The request history (seed 001's "Histórico"): every request, accepted or rejected.

Rows are queued in memory and written in batches with binary COPY by one background task,
so recording costs the hot path a ``put_nowait``. If PostgreSQL is slow or down, the batch
is retried and the queue absorbs the backlog (``history_queue_max`` rows); beyond that,
rows are dropped and counted (``ponte_history_rows_dropped_total``), never blocking a
webhook: the events themselves are already safe in Kafka before the 2xx. On shutdown the
queue is flushed. A crash loses at most the rows of the last flush interval (200 ms by
default): the history is an audit aid, the raw topic is the record of truth.

Retention: rows older than ``history_retention_days`` are deleted hourly, with the
ingest receipts of the same age.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ponte.shared.metrics import (
    HISTORY_DROPPED,
    HISTORY_QUEUE_DEPTH,
    HISTORY_WRITE_ERRORS,
    HISTORY_WRITTEN,
)
from ponte.shared.settings import Settings

log = logging.getLogger(__name__)

COLUMNS = (
    "received_at",
    "source_id",
    "tables",
    "event_id",
    "source_event_id",
    "outcome",
    "status_code",
    "reason",
    "response_body",
    "latency_ms",
    "size_bytes",
    "client_ip",
    "content_type",
    "body",
    "body_sha256",
    "warnings",
)
PRUNE_EVERY_S = 3600.0

_REFUSED = (asyncpg.DataError, ValueError, TypeError, OverflowError)
"""What a row's values (not the database's state) raise: PostgreSQL refusing a value
(NUL in text, a number out of range), or asyncpg unable to encode one (a lone
surrogate: ``UnicodeEncodeError``, a ``ValueError``; orjson's ``TypeError`` for JSONB).
Retrying cannot help; the row is written sanitised instead."""


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "") if value else value


def _storable(value: Any) -> Any:
    """``value`` with every string made storable in PostgreSQL text and JSONB: NUL
    written as the six characters ``\\u0000`` and a lone surrogate as ``\\udXXX``,
    so the sanitised row still shows what was there."""
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return value
        return value.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_storable(str(key)): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


_INT4_MAX = 2**31 - 1


@dataclass
class HistoryEntry:
    received_at: datetime
    source_id: str
    outcome: str
    status_code: int
    response_body: dict[str, Any]
    latency_ms: float
    size_bytes: int
    tables: list[str] = field(default_factory=list)
    event_id: str | None = None
    source_event_id: str | None = None
    reason: str | None = None
    client_ip: str | None = None
    content_type: str | None = None
    body: bytes | None = None
    warnings: list[str] = field(default_factory=list)
    """What was accepted but looked wrong (``deliveries.charset_mismatch``)."""

    def record(self, keep_body_bytes: int) -> tuple[Any, ...]:
        """The row for COPY. Text from the request (the source id in the path, headers)
        has NUL removed: PostgreSQL text cannot hold it, and one such row must not stop
        the history."""
        digest = hashlib.sha256(self.body).hexdigest() if self.body is not None else None
        kept = self.body if self.body is not None and len(self.body) <= keep_body_bytes else None
        return (
            self.received_at,
            (_text(self.source_id) or "")[:200],
            self.tables,
            self.event_id,
            self.source_event_id,
            self.outcome,
            self.status_code,
            self.reason,
            self.response_body,
            self.latency_ms,
            min(self.size_bytes, _INT4_MAX),
            self.client_ip,
            _text(self.content_type),
            kept,
            digest,
            self.warnings,
        )

    def sanitised(self, keep_body_bytes: int, error: BaseException) -> tuple[Any, ...]:
        """The row when PostgreSQL (or the encoding to it) refused ``record``'s: every
        text storable (``_storable``), numbers in range, and the refusal named in the
        answer column (``history_sanitised``), so the request is still recorded with
        its status, reason, size, digest and raw body (``bytea`` holds any byte)."""
        row = list(self.record(keep_body_bytes))
        texts = {"source_id", "event_id", "source_event_id", "reason", "client_ip"}
        for index, name in enumerate(COLUMNS):
            if name in texts or name == "content_type":
                row[index] = _storable(row[index])
        row[COLUMNS.index("source_id")] = row[COLUMNS.index("source_id")][:200]
        row[COLUMNS.index("outcome")] = _storable(self.outcome)[:16]
        row[COLUMNS.index("tables")] = [_storable(table) for table in self.tables]
        row[COLUMNS.index("warnings")] = [_storable(warning) for warning in self.warnings]
        answer = _storable(self.response_body)
        answer = answer if isinstance(answer, dict) else {"answer": answer}
        answer["history_sanitised"] = type(error).__name__
        row[COLUMNS.index("response_body")] = answer
        latency = self.latency_ms
        row[COLUMNS.index("latency_ms")] = latency if math.isfinite(latency) else 0.0
        row[COLUMNS.index("size_bytes")] = max(0, min(self.size_bytes, _INT4_MAX))
        return tuple(row)


class HistoryWriter:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._queue: asyncio.Queue[HistoryEntry] = asyncio.Queue(settings.history_queue_max)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def record(self, entry: HistoryEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            HISTORY_DROPPED.inc()

    async def start(self) -> None:
        # Read at scrape time rather than set on every webhook (a lock per request).
        HISTORY_QUEUE_DEPTH.set_function(self._queue.qsize)
        self._task = asyncio.create_task(self._run(), name="history-writer")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (within ``timeout_s``), then stop."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                log.error(
                    "history not flushed before shutdown", extra={"rows_lost": self._queue.qsize()}
                )

    async def _run(self) -> None:
        last_prune = 0.0
        last_write = 0.0
        while not (self._stopping.is_set() and self._queue.empty()):
            batch = await self._take_batch(last_write)
            if batch:
                last_write = time.monotonic()
                await self._write_with_retry(batch)
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                last_prune = time.monotonic()
                await self.prune()

    async def _take_batch(self, last_write: float) -> list[HistoryEntry]:
        batch: list[HistoryEntry] = []
        interval = self._settings.history_flush_interval_s
        with contextlib.suppress(TimeoutError):
            batch.append(await asyncio.wait_for(self._queue.get(), interval))
        # At most one COPY per flush interval unless a full batch is waiting: taking
        # whatever arrived during the previous COPY meant a COPY of a few rows every few
        # milliseconds at a steady 1,000 webhooks/s (7% of ingest's CPU in the benchmark).
        # A crash loses no more than before: the rows of one flush interval.
        wait_s = last_write + interval - time.monotonic()
        if (
            batch
            and wait_s > 0
            and not self._stopping.is_set()
            and self._queue.qsize() < self._settings.history_batch_size - 1
        ):
            await asyncio.sleep(wait_s)
        while batch and len(batch) < self._settings.history_batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def _write_with_retry(self, batch: list[HistoryEntry]) -> None:
        delay = 0.2
        records = [entry.record(self._settings.history_keep_body_bytes) for entry in batch]
        while True:
            try:
                await self._copy(records)
                return
            except _REFUSED:
                # A value PostgreSQL refuses, or that cannot even be encoded for it (a
                # lone surrogate raises before anything is sent): write the rows one by
                # one, and that one sanitised.
                await self._write_one_by_one(batch, records)
                return
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                HISTORY_WRITE_ERRORS.inc()
                if self._stopping.is_set() and delay > 2:
                    log.error(
                        "history batch lost at shutdown",
                        extra={"rows": len(records), "error": type(error).__name__},
                    )
                    return
                log.warning(
                    "history write failed; retrying",
                    extra={"rows": len(records), "error": type(error).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _copy(self, records: list[tuple[Any, ...]]) -> None:
        await self._pool.copy_records_to_table(
            "webhook_requests", records=records, columns=COLUMNS, timeout=30
        )
        HISTORY_WRITTEN.inc(len(records))

    async def _write_one_by_one(
        self, batch: list[HistoryEntry], records: list[tuple[Any, ...]]
    ) -> None:
        keep = self._settings.history_keep_body_bytes
        for entry, record in zip(batch, records, strict=True):
            try:
                await self._copy([record])
                continue
            except _REFUSED as error:
                log.warning(
                    "history row refused by the database; writing it sanitised",
                    extra={"error": type(error).__name__},
                )
                sanitised = entry.sanitised(keep, error)
            try:
                await self._copy([sanitised])
            except _REFUSED as error:
                HISTORY_DROPPED.inc()
                log.error(
                    "sanitised history row refused by the database; dropped",
                    extra={"error": type(error).__name__},
                )

    async def prune(self) -> int:
        """Delete history rows and receipts past the retention period."""
        cutoff = datetime.now(UTC) - timedelta(days=self._settings.history_retention_days)
        try:
            status = await self._pool.execute(
                "DELETE FROM webhook_requests WHERE received_at < $1", cutoff
            )
            await self._pool.execute("DELETE FROM ingest_receipts WHERE claimed_at < $1", cutoff)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("history pruning failed", extra={"error": type(error).__name__})
            return 0
        return int(status.split()[-1])
