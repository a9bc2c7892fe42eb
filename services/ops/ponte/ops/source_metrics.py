"""Per-source gauges for alerting: last success, maximum silence, active.

The maximum time without success is a per-source setting people edit on the ops page
(seed 001's "Tempo máximo sem sucesso na integração"), so the alert has to compare against
each source's own value; these gauges carry both sides. The ops service refreshes them
every ``REFRESH_S`` from PostgreSQL (one query for all sources), so any replica answers the
same and a restart of ingest does not reset "last success".
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from ponte.ops.status import DEFAULT_MAX_SILENCE_HOURS, SUCCESS_OUTCOMES
from ponte.shared import db
from ponte.shared.kafka import sleep_or_stop
from ponte.shared.metrics import SOURCE_ACTIVE, SOURCE_LAST_SUCCESS, SOURCE_MAX_SILENCE

log = logging.getLogger(__name__)

REFRESH_S = 30.0

_QUERY = """
SELECT s.id, s.active,
       coalesce(o.max_silence_hours, $2) AS max_silence_hours,
       greatest(
           (SELECT max(received_at) FROM webhook_requests w
            WHERE w.source_id = s.id AND w.outcome = ANY($1::text[])),
           (SELECT max(finished_at) FROM pull_runs p
            WHERE p.source_id = s.id AND p.status = 'ok')
       ) AS last_success
FROM sources s LEFT JOIN source_ops o ON o.source_id = s.id
"""


async def refresh(pool: asyncpg.Pool) -> int:
    """Set every source's gauges; returns how many sources there are."""
    rows = await pool.fetch(_QUERY, list(SUCCESS_OUTCOMES), DEFAULT_MAX_SILENCE_HOURS)
    for row in rows:
        last = row["last_success"]
        SOURCE_LAST_SUCCESS.labels(row["id"]).set(last.timestamp() if last else 0)
        SOURCE_MAX_SILENCE.labels(row["id"]).set(row["max_silence_hours"] * 3600)
        SOURCE_ACTIVE.labels(row["id"]).set(1 if row["active"] else 0)
    return len(rows)


async def keep_fresh(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    while True:
        try:
            await refresh(pool)
        except db.UNAVAILABLE as error:
            log.warning("source gauges not refreshed", extra={"error": type(error).__name__})
        if await sleep_or_stop(stop, REFRESH_S):
            return
