"""The record of pull runs (seed 001's list of runs: date, status, log) and the cursor each
source has reached.

A run row is written when the run starts (``running``) and completed when it ends
(``ok`` or ``failed``); a run that could not start because another one of the same source
was going is recorded as ``skipped_locked``. The cursor lives in its own table, written in
the same transaction that marks a run ``ok``: it moves only with a successful run, and
pruning old runs never loses it.

An FTP folder pull's cursor is different: it is the ledger of files taken (a JSON object,
file name -> size, modification time, rows, error), kept in the same ``pull_cursors`` row.
It moves file by file, each entry written the moment Kafka has acknowledged every row of
its file (``remember_files``), not at the end of the run: a run that loses the broker
after three files keeps those three, and only the rest is the next run's work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from ponte.shared.db import DbConnection

RunStatus = Literal["running", "ok", "failed", "skipped_locked"]
Trigger = Literal["schedule", "manual"]
MAX_REJECTED_KEPT = 100
"""Rejected records kept per run (row, field, reason): enough to fix the source's data."""


@dataclass
class RunRecord:
    """A run as the ops page and the "run now" answer show it."""

    id: int
    source_id: str
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    duration_ms: float | None = None
    pages: int = 0
    rows_pulled: int = 0
    rows_rejected: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    error: str | None = None
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        body = dict(self.__dict__)
        for name in ("started_at", "finished_at"):
            body[name] = body[name].isoformat() if body[name] else None
        return body


_COLUMNS = (
    "id, source_id, trigger, status, started_at, finished_at, duration_ms, pages, "
    "rows_pulled, rows_rejected, cursor_before, cursor_after, error, rejected"
)


def _record(row: asyncpg.Record | None) -> RunRecord:
    assert row is not None, "INSERT ... RETURNING returns the row"
    return RunRecord(**dict(row))


async def begin_run(
    connection: DbConnection,
    *,
    source_id: str,
    trigger: Trigger,
    started_at: datetime,
    cursor_before: str | None,
) -> RunRecord:
    row = await connection.fetchrow(
        "INSERT INTO pull_runs (source_id, trigger, status, started_at, pages, rows_pulled, "  # noqa: S608 - fixed column list
        "rows_rejected, cursor_before, rejected) VALUES ($1, $2, 'running', $3, 0, 0, 0, $4, "
        f"'[]'::jsonb) RETURNING {_COLUMNS}",
        source_id,
        trigger,
        started_at,
        cursor_before,
    )
    return _record(row)


async def finish_run(connection: DbConnection, run: RunRecord, *, save_cursor: bool = True) -> None:
    """Complete the run row; for an ``ok`` run the cursor moves in the same transaction
    (unless ``save_cursor`` is false: an FTP pull's ledger was written file by file)."""
    async with connection.transaction():
        await connection.execute(
            "UPDATE pull_runs SET status = $2, finished_at = $3, duration_ms = $4, pages = $5, "
            "rows_pulled = $6, rows_rejected = $7, cursor_after = $8, error = $9, "
            "rejected = $10 WHERE id = $1",
            run.id,
            run.status,
            run.finished_at,
            run.duration_ms,
            run.pages,
            run.rows_pulled,
            run.rows_rejected,
            run.cursor_after,
            run.error,
            run.rejected[:MAX_REJECTED_KEPT],
        )
        if run.status == "ok" and save_cursor:
            await connection.execute(
                "INSERT INTO pull_cursors (source_id, cursor, run_id, updated_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (source_id) DO UPDATE SET "
                "cursor = EXCLUDED.cursor, run_id = EXCLUDED.run_id, "
                "updated_at = EXCLUDED.updated_at",
                run.source_id,
                run.cursor_after,
                run.id,
                run.finished_at,
            )


async def record_skipped(
    connection: DbConnection, *, source_id: str, trigger: Trigger, at: datetime
) -> RunRecord:
    row = await connection.fetchrow(
        "INSERT INTO pull_runs (source_id, trigger, status, started_at, finished_at, "  # noqa: S608 - fixed column list
        "duration_ms, pages, rows_pulled, rows_rejected, error, rejected) VALUES "
        "($1, $2, 'skipped_locked', $3, $3, 0, 0, 0, 0, "
        "'another run of this source was going', '[]'::jsonb) "
        f"RETURNING {_COLUMNS}",
        source_id,
        trigger,
        at,
    )
    return _record(row)


async def saved_cursor(connection: DbConnection, source_id: str) -> tuple[str | None, int]:
    """The cursor and the id of the run that saved it ((None, 0) before the first success).
    The run id is the *basis* of the next run's event ids: a run that re-pulls after a
    failure has the same basis, so it produces the same ids and the transform drops what
    the failed run had already written."""
    row = await connection.fetchrow(
        "SELECT cursor, run_id FROM pull_cursors WHERE source_id = $1", source_id
    )
    return (row["cursor"], row["run_id"]) if row else (None, 0)


async def last_started(connection: DbConnection, source_id: str) -> datetime | None:
    """When the last run of the source that really ran (any replica) started."""
    started: datetime | None = await connection.fetchval(
        "SELECT max(started_at) FROM pull_runs WHERE source_id = $1 "
        "AND status IN ('running', 'ok', 'failed')",
        source_id,
    )
    return started


async def interrupt_orphans(connection: DbConnection, source_id: str, at: datetime) -> int:
    """Mark ``running`` rows failed. Called while holding the source's lock, so no run of it
    is going: such rows belong to a process that died mid-run."""
    status = await connection.execute(
        "UPDATE pull_runs SET status = 'failed', finished_at = $2, "
        "error = 'interrupted: the process running it stopped before it finished' "
        "WHERE source_id = $1 AND status = 'running'",
        source_id,
        at,
    )
    return int(status.split()[-1])


async def last_runs(pool: asyncpg.Pool, source_id: str, limit: int = 20) -> list[RunRecord]:
    """The source's most recent runs, newest first (the ops page's list)."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM pull_runs WHERE source_id = $1 "  # noqa: S608
        "ORDER BY started_at DESC, id DESC LIMIT $2",
        source_id,
        limit,
    )
    return [_record(row) for row in rows]


async def prune_runs(pool: asyncpg.Pool, before: datetime) -> int:
    status = await pool.execute("DELETE FROM pull_runs WHERE started_at < $1", before)
    return int(status.split()[-1])


async def taken_files(connection: DbConnection, source_id: str) -> dict[str, dict[str, Any]] | None:
    """An FTP pull's ledger: every file taken (or refused) by name; empty before the first
    run. None when the stored cursor is not a JSON object (the source was pulled over REST
    before): the caller replaces it before merging into it (``remember_files``)."""
    cursor = await connection.fetchval(
        "SELECT cursor FROM pull_cursors WHERE source_id = $1", source_id
    )
    if cursor is None:
        return {}
    try:
        ledger = json.loads(cursor)
    except ValueError:
        return None
    return ledger if isinstance(ledger, dict) else None


async def remember_files(
    connection: DbConnection,
    *,
    source_id: str,
    entries: dict[str, dict[str, Any]],
    run_id: int,
    at: datetime,
    replace: bool = False,
) -> None:
    """Add ``entries`` to the ledger (one file just taken), or with ``replace`` make them
    the whole ledger (the end of a run: files gone from the folder are forgotten, so the
    ledger never outgrows the folder). jsonb ``||`` merges in PostgreSQL: one file's write
    does not rewrite what the run has not touched from Python's copy."""
    document = json.dumps(entries, ensure_ascii=False, sort_keys=True)
    merged = (
        "EXCLUDED.cursor"
        if replace
        else "(coalesce(pull_cursors.cursor, '{}')::jsonb || EXCLUDED.cursor::jsonb)::text"
    )
    await connection.execute(
        "INSERT INTO pull_cursors (source_id, cursor, run_id, updated_at) "  # noqa: S608 - fixed text
        f"VALUES ($1, $2, $3, $4) ON CONFLICT (source_id) DO UPDATE SET cursor = {merged}, "
        "run_id = EXCLUDED.run_id, updated_at = EXCLUDED.updated_at",
        source_id,
        document,
        run_id,
        at,
    )
