"""A pulled source's "Informações Gerais": scheduled, its schedule, the next run and its
pull runs, from the same pulls file the ingest runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import yaml
from pydantic import SecretStr

from ponte.shared.settings import Settings
from tests.conftest import BOX
from tests.ops.conftest import OPS_TOKEN, RunningOps, erp_source, serve_ops

pytestmark = pytest.mark.integration


@pytest.fixture
async def ops_with_pulls(
    settings: Settings, pool: asyncpg.Pool, source_id: str, tmp_path: Path
) -> AsyncIterator[RunningOps]:
    from ponte.shared.sources import SourceConfig, apply_sources

    await apply_sources(pool, [SourceConfig.model_validate(erp_source(source_id))], BOX)
    pulls = tmp_path / "pulls.yaml"
    pulls.write_text(
        yaml.safe_dump(
            {
                "pulls": [
                    {
                        "source_id": source_id,
                        "schedule": {"every_minutes": 30},
                        "request": {"base_url": "http://127.0.0.1:9", "path": "/empresas"},
                        "rows": {"list_path": "data", "table": "Empresa"},
                    }
                ]
            }
        )
    )
    async for running in serve_ops(
        settings.model_copy(update={"ops_token": SecretStr(OPS_TOKEN), "pulls_file": pulls})
    ):
        yield running


async def test_a_pulled_source_shows_its_schedule_next_run_and_runs(
    ops_with_pulls: RunningOps, pool: asyncpg.Pool, source_id: str
) -> None:
    started = datetime.now(UTC) - timedelta(minutes=5)
    await pool.execute(
        "INSERT INTO pull_runs (source_id, trigger, status, started_at, finished_at, "
        "duration_ms, pages, rows_pulled, rows_rejected, rejected) "
        "VALUES ($1, 'schedule', 'ok', $2, $3, 1500, 2, 40, 1, '[]'::jsonb)",
        source_id,
        started,
        started + timedelta(seconds=1.5),
    )
    async with ops_with_pulls.client() as client:
        status = (await client.get(f"/ops/sources/{source_id}")).json()
    assert status["scheduled"] is True
    assert status["scheduled_note"] == "every 30 minutes"
    next_run = datetime.fromisoformat(status["next_scheduled_run"])
    assert timedelta(0) < next_run - datetime.now(UTC) <= timedelta(minutes=30)
    [run] = status["pull_runs"]
    assert (run["status"], run["rows_pulled"], run["rows_rejected"]) == ("ok", 40, 1)
    assert status["average_duration_ms"] == 1500
    assert datetime.fromisoformat(status["last_success_at"]) == started + timedelta(seconds=1.5)
    assert status["silent_too_long"] is False


async def test_a_webhook_source_is_not_scheduled(
    ops_with_pulls: RunningOps, pool: asyncpg.Pool
) -> None:
    from ponte.shared.sources import SourceConfig, apply_sources

    other = "ops-webhook-only"
    await apply_sources(pool, [SourceConfig.model_validate(erp_source(other))], BOX)
    async with ops_with_pulls.client() as client:
        status = (await client.get(f"/ops/sources/{other}")).json()
    assert status["scheduled"] is False and status["next_scheduled_run"] is None
    assert "webhook source" in status["scheduled_note"]


async def test_source_gauges_carry_last_success_and_the_sources_own_maximum(
    ops_with_pulls: RunningOps, pool: asyncpg.Pool, source_id: str
) -> None:
    from ponte.ops.source_metrics import refresh
    from ponte.shared.metrics import SOURCE_ACTIVE, SOURCE_LAST_SUCCESS, SOURCE_MAX_SILENCE

    finished = datetime.now(UTC) - timedelta(hours=3)
    await pool.execute(
        "INSERT INTO pull_runs (source_id, trigger, status, started_at, finished_at, "
        "duration_ms, pages, rows_pulled, rows_rejected, rejected) "
        "VALUES ($1, 'manual', 'ok', $2, $2, 10, 1, 1, 0, '[]'::jsonb), "
        "($1, 'schedule', 'failed', $3, $3, 10, 1, 0, 0, '[]'::jsonb)",
        source_id,
        finished,
        datetime.now(UTC),  # a later failure is not a success
    )
    async with ops_with_pulls.client() as client:
        edited = await client.patch(f"/ops/sources/{source_id}", json={"max_silence_hours": 2})
        assert edited.status_code == 200, edited.text
    await refresh(pool)
    assert SOURCE_LAST_SUCCESS.labels(source_id)._value.get() == finished.timestamp()
    assert SOURCE_MAX_SILENCE.labels(source_id)._value.get() == 7200
    assert SOURCE_ACTIVE.labels(source_id)._value.get() == 1
