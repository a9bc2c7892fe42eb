"""The request history export (seed 001's "Histórico"): every request received in a
period, with its response, as an Excel workbook or CSV.

Memory stays flat however long the period: rows come from a server-side cursor in
batches of ``BATCH_ROWS`` inside one read-only transaction (a consistent snapshot), and
each batch goes straight out. CSV batches are sent as they are encoded. An .xlsx file is
a zip whose index is written last, so it cannot be sent before it is complete: openpyxl's
write-only workbook writes each appended row to a temporary file on disk, the finished
workbook is saved to another temporary file, and that file is streamed in 64 KiB chunks.
openpyxl is synchronous, so its work runs in a thread and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from openpyxl import Workbook  # type: ignore[import-untyped]  # no stubs shipped

BATCH_ROWS = 500
CHUNK_BYTES = 64 * 1024
EXCEL_CELL_MAX = 32_767
"""Excel refuses a longer cell; longer bodies are cut and marked."""
_EXCEL_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")

COLUMNS = (
    "request_id",
    "received_at",
    "source_id",
    "tables",
    "outcome",
    "status_code",
    "reason",
    "warnings",
    "event_id",
    "source_event_id",
    "latency_ms",
    "size_bytes",
    "client_ip",
    "content_type",
    "request_body",
    "request_body_sha256",
    "response_body",
)


@dataclass(frozen=True)
class HistoryQuery:
    since: datetime
    until: datetime
    source_id: str | None
    tables: list[str]


def _body_text(body: bytes | None) -> str | None:
    """The request body as text: UTF-8, or Latin-1 for older ERPs (every byte decodes)."""
    if body is None:
        return None
    try:
        return body.decode()
    except UnicodeDecodeError:
        return body.decode("latin-1")


def _cells(row: asyncpg.Record) -> tuple[Any, ...]:
    return (
        row["id"],
        row["received_at"],
        row["source_id"],
        ", ".join(row["tables"]),
        row["outcome"],
        row["status_code"],
        row["reason"],
        "; ".join(row["warnings"]),
        row["event_id"],
        row["source_event_id"],
        round(row["latency_ms"], 3),
        row["size_bytes"],
        row["client_ip"],
        row["content_type"],
        _body_text(row["body"]),
        row["body_sha256"],
        orjson.dumps(row["response_body"]).decode(),
    )


async def history_batches(
    pool: asyncpg.Pool, query: HistoryQuery, batch_rows: int = BATCH_ROWS
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The matching requests, oldest first, ``batch_rows`` at a time."""
    async with (
        pool.acquire() as connection,
        connection.transaction(readonly=True, isolation="repeatable_read"),
    ):
        cursor = await connection.cursor(
            "SELECT id, received_at, source_id, tables, outcome, status_code, reason, warnings, "
            "event_id, source_event_id, latency_ms, size_bytes, client_ip, content_type, "
            "body, body_sha256, response_body FROM webhook_requests "
            "WHERE received_at >= $1 AND received_at < $2 "
            "AND ($3::text IS NULL OR source_id = $3) "
            "AND (cardinality($4::text[]) = 0 OR tables && $4::text[]) "
            "ORDER BY received_at, id",
            query.since,
            query.until,
            query.source_id,
            query.tables,
        )
        while rows := await cursor.fetch(batch_rows):
            yield [_cells(row) for row in rows]


async def csv_chunks(batches: AsyncIterator[list[tuple[Any, ...]]]) -> AsyncIterator[bytes]:
    """UTF-8 with a byte-order mark, so Excel opens accented text correctly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    yield "\ufeff".encode() + buffer.getvalue().encode()
    async for batch in batches:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(
            tuple(cell.isoformat() if isinstance(cell, datetime) else cell for cell in row)
            for row in batch
        )
        yield buffer.getvalue().encode()


def _excel_cell(value: Any) -> Any:
    if isinstance(value, str):
        value = _EXCEL_ILLEGAL.sub("", value)
        if len(value) > EXCEL_CELL_MAX:
            marker = " …[truncated; full body in the log download]"
            value = value[: EXCEL_CELL_MAX - len(marker)] + marker
    elif isinstance(value, datetime):
        # Excel has no time zones: write the UTC time (the header says so).
        if value.utcoffset() is not None:
            value = value.astimezone(UTC)
        value = value.replace(tzinfo=None)
    return value


def _append(sheet: Any, batch: list[tuple[Any, ...]]) -> None:
    for row in batch:
        sheet.append([_excel_cell(cell) for cell in row])


async def xlsx_chunks(batches: AsyncIterator[list[tuple[Any, ...]]]) -> AsyncIterator[bytes]:
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Historico")
    sheet.append([column if column != "received_at" else "received_at_utc" for column in COLUMNS])
    async for batch in batches:
        await asyncio.to_thread(_append, sheet, batch)
    with tempfile.TemporaryFile() as file:
        await asyncio.to_thread(workbook.save, file)
        file.seek(0)
        while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
            yield chunk
