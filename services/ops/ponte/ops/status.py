"""A source's "Informações Gerais" (seed 001, section 3.1), read from what Ponte records.

Sources either push webhooks or are pulled on a schedule (``PONTE_PULLS_FILE``). For a
pulled source, ``scheduled`` is true, the schedule and the next run come from its pull
definition, and its pull runs (``pull_runs``: start, status, duration, rows) are listed
and count for "last success" and "average duration". For a webhook request, a "run" is one
request: its date and status come from the request history (``webhook_requests``), its
duration is the time ingest took to answer it, and its log is the recorded request and
response. "Size of the integration's data" is the number
of CRM rows that came from the source, per CRM table, plus the bytes of its history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from ponte.ops.fingerprints import fingerprint
from ponte.shared.crm_model import crm_model
from ponte.shared.pulls import PullDefinition, Schedule, load_pulls_file, next_run
from ponte.shared.secret_box import SecretBox

RECENT_RUNS = 20
SUCCESS_OUTCOMES = ("accepted", "duplicate")
"""Requests whose data is safely in Ponte: what "last success" and "success" mean."""
NOT_SCHEDULED = (
    "webhook source: Ponte receives its data when the ERP or shop sends it, so there is "
    "no schedule (a source without webhooks gets one in PONTE_PULLS_FILE)"
)

Schedules = Mapping[str, PullDefinition]
"""Pull definitions by source id."""


def load_schedules(path: Path | None) -> Schedules:
    """The pulls file the ingest runs (none, or a missing file: no scheduled source)."""
    if path is None or not path.exists():
        return {}
    return {definition.source_id: definition for definition in load_pulls_file(path)}


def describe(schedule: Schedule) -> str:
    """Seed 001's wording of a schedule."""
    if schedule.online:
        return "online (every 20 s)"
    if schedule.every_minutes is not None:
        return f"every {schedule.every_minutes} minutes"
    return f"daily at {schedule.daily} ({schedule.timezone})"


class PullRunSummary(BaseModel):
    id: int
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    rows_pulled: int
    rows_rejected: int
    error: str | None


DEFAULT_MAX_SILENCE_HOURS = 24.0


class RecentRun(BaseModel):
    request_id: int
    received_at: datetime
    status: Literal["success", "error"]
    outcome: str
    status_code: int
    reason: str | None
    warnings: list[str] = Field(
        default_factory=list,
        description="Accepted, but looked wrong (a body declared ISO-8859-1 that is UTF-8).",
    )
    tables: list[str]
    duration_ms: float
    log_url: str = Field(description="The request and its response, as a JSON download.")


class DataSize(BaseModel):
    crm_rows: dict[str, int] = Field(description="CRM rows from this source, per CRM table.")
    crm_rows_total: int
    history_requests: int
    history_bytes: int = Field(description="Bytes the source's request history takes.")


class SourceStatus(BaseModel):
    id: str
    display_name: str
    integration_type: str = Field(description="The source's kind: erp, shopify, woocommerce.")
    erp_name: str | None
    erp_version: str | None
    deployment_status: Literal["in_progress", "completed"]
    active: bool
    scheduled: bool = False
    scheduled_note: str = NOT_SCHEDULED
    next_scheduled_run: datetime | None = None
    pull_runs: list[PullRunSummary] = Field(
        default_factory=list, description="Recent scheduled or manual pulls, newest first."
    )
    average_duration_ms: float | None = Field(
        description="Mean time ingest took to answer the recent successful requests."
    )
    recent_runs: list[RecentRun]
    data_size: DataSize
    business_rule: str
    max_silence_hours: float
    last_success_at: datetime | None
    last_request_at: datetime | None
    silent_too_long: bool = Field(
        description="Active, and no success within max_silence_hours (what alerts fire on); "
        "a source that never succeeded counts from its creation."
    )
    never_succeeded: bool = Field(description="No successful request or pull yet.")
    secret_fingerprints: list[str] = Field(description="Secrets are never shown, only these.")
    allowed_cidrs: list[str]
    tables: list[str]


def _crm_rows_query() -> str:
    """One statement counting this source's live rows in every CRM entity table."""
    parts = [
        f"SELECT '{spec.table}' AS crm_table, count(*) AS n "  # noqa: S608 - names from the model registry
        f"FROM {spec.table} WHERE source_id = $1 AND deleted_at IS NULL"
        for spec in crm_model().entities.values()
    ]
    return " UNION ALL ".join(parts)


CRM_ROWS_QUERY = _crm_rows_query()


async def source_ids(pool: asyncpg.Pool) -> list[str]:
    return [row["id"] for row in await pool.fetch("SELECT id FROM sources ORDER BY id")]


async def ops_settings(connection: Any, source_id: str) -> dict[str, Any]:
    """The source's ops row, or the defaults when nobody has edited it yet."""
    row = await connection.fetchrow(
        "SELECT business_rule, max_silence_hours, deployment_status FROM source_ops "
        "WHERE source_id = $1",
        source_id,
    )
    if row is None:
        return {
            "business_rule": "",
            "max_silence_hours": DEFAULT_MAX_SILENCE_HOURS,
            "deployment_status": "in_progress",
        }
    return dict(row)


async def source_status(
    pool: asyncpg.Pool,
    source_id: str,
    *,
    box: SecretBox,
    now: datetime | None = None,
    pulls: Schedules | None = None,
) -> SourceStatus | None:
    now = now or datetime.now(UTC)
    pull = (pulls or {}).get(source_id)
    async with pool.acquire() as connection:
        source = await connection.fetchrow("SELECT * FROM sources WHERE id = $1", source_id)
        if source is None:
            return None
        ops = await ops_settings(connection, source_id)
        runs = await connection.fetch(
            "SELECT id, received_at, outcome, status_code, reason, warnings, tables, latency_ms "
            "FROM webhook_requests WHERE source_id = $1 ORDER BY received_at DESC LIMIT $2",
            source_id,
            RECENT_RUNS,
        )
        success = await connection.fetchrow(
            "SELECT max(received_at) AS last_at, avg(latency_ms) FILTER "
            "(WHERE received_at > $3) AS average_ms FROM webhook_requests "
            "WHERE source_id = $1 AND outcome = ANY($2::text[])",
            source_id,
            list(SUCCESS_OUTCOMES),
            now - timedelta(days=7),
        )
        history = await connection.fetchrow(
            "SELECT count(*) AS requests, max(received_at) AS last_at, "
            "coalesce(sum(pg_column_size(w.*)), 0) AS bytes "
            "FROM webhook_requests w WHERE source_id = $1",
            source_id,
        )
        pull_runs = await connection.fetch(
            "SELECT id, trigger, status, started_at, finished_at, duration_ms, rows_pulled, "
            "rows_rejected, error FROM pull_runs WHERE source_id = $1 "
            "ORDER BY started_at DESC LIMIT $2",
            source_id,
            RECENT_RUNS,
        )
        crm_rows = {
            row["crm_table"]: row["n"]
            for row in await connection.fetch(CRM_ROWS_QUERY, source_id)
            if row["n"]
        }
    assert success is not None and history is not None  # aggregates always return a row
    pulled_ok = [run for run in pull_runs if run["status"] == "ok"]
    last_success: datetime | None = max(
        (at for at in (success["last_at"], *(r["finished_at"] for r in pulled_ok)) if at),
        default=None,
    )
    average_ms = success["average_ms"]
    if pulled_ok:  # a pulled source's "duration" is its runs'
        average_ms = sum(r["duration_ms"] or 0 for r in pulled_ok) / len(pulled_ok)
    max_silence = timedelta(hours=ops["max_silence_hours"])
    return SourceStatus(
        id=source["id"],
        display_name=source["display_name"],
        integration_type=source["kind"],
        erp_name=source["erp_name"],
        erp_version=source["erp_version"],
        deployment_status=ops["deployment_status"],
        active=source["active"],
        scheduled=pull is not None and pull.active,
        scheduled_note=describe(pull.schedule) if pull is not None else NOT_SCHEDULED,
        next_scheduled_run=next_run(pull, now) if pull is not None and pull.active else None,
        pull_runs=[PullRunSummary(**dict(run)) for run in pull_runs],
        average_duration_ms=average_ms,
        recent_runs=[
            RecentRun(
                request_id=run["id"],
                received_at=run["received_at"],
                status="success" if run["outcome"] in SUCCESS_OUTCOMES else "error",
                outcome=run["outcome"],
                status_code=run["status_code"],
                reason=run["reason"],
                warnings=run["warnings"],
                tables=run["tables"],
                duration_ms=run["latency_ms"],
                log_url=f"/ops/history/{run['id']}/log",
            )
            for run in runs
        ],
        data_size=DataSize(
            crm_rows=crm_rows,
            crm_rows_total=sum(crm_rows.values()),
            history_requests=history["requests"],
            history_bytes=history["bytes"],
        ),
        business_rule=ops["business_rule"],
        max_silence_hours=ops["max_silence_hours"],
        last_success_at=last_success,
        last_request_at=history["last_at"],
        silent_too_long=source["active"]
        and now - (last_success or source["created_at"]) > max_silence,
        never_succeeded=last_success is None,
        # Of the secrets themselves (stored sealed, with a fresh nonce per write), so a
        # fingerprint stays the same across writes and matches the audit trail's.
        secret_fingerprints=[fingerprint(secret) for secret in box.open_all(source["secrets"])],
        allowed_cidrs=source["allowed_cidrs"],
        tables=source["tables"],
    )
