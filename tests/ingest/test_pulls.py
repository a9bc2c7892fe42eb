"""Scheduled pulls against the real broker and PostgreSQL, the ERP being a stand-in REST
API over real HTTP (tests/stand_ins/erp_rest.py).

What is checked is what lands: the raw topic's messages (once each, keyed like a
webhook's), the ``pull_runs`` rows and the saved cursor."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from ponte.ingest.publisher import EventPublisher
from ponte.ingest.pulls.scheduler import PullScheduler, key_fields_by_source
from ponte.shared import db
from ponte.shared.pulls import (
    PullDefinition,
    check_sources,
    next_run,
    parse_definitions,
    previous_slot,
)
from ponte.shared.settings import Settings
from ponte.shared.sources import SourceConfig
from tests.conftest import event_of, read_topic, serve_ingest, write_sources
from tests.eventually import eventually
from tests.ingest.conftest import SOURCE_SECRET
from tests.stand_ins.erp_rest import ErpRestState, create_stand_in
from tests.stand_ins.serve import serve

ERP_TOKEN = "erp-api-token-for-tests"
SECRET = SOURCE_SECRET


def _company(code: str, updated_at: str, name: str) -> dict[str, Any]:
    return {"codigo": code, "nome": name, "cnpj": "11.222.333/0001-81", "updated_at": updated_at}


def _definition(source_id: str, base_url: str, **schedule: Any) -> dict[str, Any]:
    return {
        "source_id": source_id,
        "schedule": schedule or {"every_minutes": 30},
        "request": {
            "base_url": base_url,
            "path": "/api/v1/empresas",
            "headers": {"Authorization": f"Bearer {ERP_TOKEN}"},
            "params": {"limit": 2},
            "cursor": {"param": "updated_since", "response_path": "sync.next_updated_since"},
            "pagination": {
                "style": "next_token",
                "param": "page_token",
                "token_path": "paging.next_page_token",
            },
        },
        "rows": {
            "list_path": "data",
            "table": "Empresa",
            "renames": {"nome": "razao_social"},
            "occurred_at_field": "updated_at",
        },
    }


@pytest.fixture
async def erp() -> AsyncIterator[tuple[ErpRestState, str]]:
    state = ErpRestState(token=ERP_TOKEN)
    async with serve(create_stand_in(state)) as url:
        yield state, url


def _scheduler(
    pool: asyncpg.Pool, publisher: EventPublisher, definition: PullDefinition, **extra: Any
) -> PullScheduler:
    return PullScheduler(
        pool, publisher, [definition], key_fields_by_source([definition], None), **extra
    )


async def _runs(pool: asyncpg.Pool, source_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM pull_runs WHERE source_id = $1 ORDER BY id", source_id)


async def _cursor(pool: asyncpg.Pool, source_id: str) -> str | None:
    cursor: str | None = await pool.fetchval(
        "SELECT cursor FROM pull_cursors WHERE source_id = $1", source_id
    )
    return cursor


@pytest.mark.integration
async def test_scheduled_pull_of_two_pages_lands_every_record_once_and_saves_the_cursor(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    erp: tuple[ErpRestState, str],
    source_id: str,
) -> None:
    state, url = erp
    for record in (
        _company("E1", "2024-11-14T10:00:00-03:00", "Pão de Açúcar"),
        _company("E2", "2024-11-14T10:05:00-03:00", "Casa Bahia"),
        _company("E3", "2024-11-14T10:07:00-03:00", "Loja Três"),
    ):
        state.upsert("empresas", record)
    (definition,) = parse_definitions([_definition(source_id, url, online=True)])
    # A clock 0.3 s before the next 20-second slot, so the real schedule loop fires soon.
    now = datetime.now(UTC)
    shift = next_run(definition, now) - now - timedelta(seconds=0.3)
    scheduler = _scheduler(pool, publisher, definition, clock=lambda: datetime.now(UTC) + shift)
    await scheduler.start()
    try:
        await eventually(
            lambda: _runs(pool, source_id),
            satisfied=lambda runs: runs and runs[-1]["status"] != "running",
            timeout_s=10,
            message="the scheduled pull run to finish",
        )
    finally:
        await scheduler.stop()

    (run,) = await _runs(pool, source_id)
    assert (run["status"], run["trigger"], run["pages"], run["rows_pulled"]) == (
        "ok",
        "schedule",
        2,
        3,
    )
    assert run["cursor_before"] is None
    assert run["cursor_after"] == "2024-11-14T10:07:00-03:00"
    assert await _cursor(pool, source_id) == "2024-11-14T10:07:00-03:00"
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=3)
    events = [event_of(message) for message in messages]
    assert sorted(message.key for message in messages) == [
        f"{source_id}/Empresa/E{n}".encode() for n in (1, 2, 3)
    ]
    assert len({event["event_id"] for event in events}) == 3
    first = next(event for event in events if event["record_key"] == "E1")
    assert first["topic"] == "Empresa" and first["source_kind"] == "erp"
    assert first["payload"]["razao_social"] == "Pão de Açúcar"  # renamed from "nome"
    assert "nome" not in first["payload"]
    assert datetime.fromisoformat(first["occurred_at"]) == datetime.fromisoformat(
        "2024-11-14T10:00:00-03:00"
    )
    assert [request.get("page_token") is None for request in state.requests] == [True, False]


@pytest.mark.integration
async def test_the_next_run_pulls_only_newer_records(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    erp: tuple[ErpRestState, str],
    source_id: str,
) -> None:
    state, url = erp
    state.upsert("empresas", _company("E1", "2024-11-14T10:00:00-03:00", "Um"))
    state.upsert("empresas", _company("E2", "2024-11-14T10:05:00-03:00", "Dois"))
    (definition,) = parse_definitions([_definition(source_id, url)])
    scheduler = _scheduler(pool, publisher, definition)
    try:
        first = await scheduler.run_now(source_id, wait=True)
        state.upsert("empresas", _company("E2", "2024-11-15T08:00:00-03:00", "Dois mudou"))
        state.upsert("empresas", _company("E4", "2024-11-15T09:00:00-03:00", "Quatro"))
        second = await scheduler.run_now(source_id, wait=True)
    finally:
        await scheduler.stop()

    assert (first.status, first.rows_pulled) == ("ok", 2)
    assert (second.status, second.rows_pulled) == ("ok", 2)
    assert second.cursor_before == "2024-11-14T10:05:00-03:00"
    assert second.cursor_after == "2024-11-15T09:00:00-03:00"
    # The ERP was asked only for what changed after the saved cursor.
    assert state.requests[-1]["updated_since"] == "2024-11-14T10:05:00-03:00"
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=4)
    events = [event_of(message) for message in messages]
    assert sorted((e["record_key"], e["payload"]["razao_social"]) for e in events) == [
        ("E1", "Um"),
        ("E2", "Dois"),
        ("E2", "Dois mudou"),
        ("E4", "Quatro"),
    ]
    assert len(events) == 4


@pytest.mark.integration
async def test_two_replicas_racing_on_one_source_make_one_run_and_no_duplicates(
    settings: Settings,
    base_settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    erp: tuple[ErpRestState, str],
    source_id: str,
) -> None:
    state, url = erp
    for n in range(1, 4):
        state.upsert("empresas", _company(f"E{n}", f"2024-11-14T10:0{n}:00-03:00", f"E {n}"))
    state.delay_s = 0.3  # the run holds the lock while the other replica tries
    (definition,) = parse_definitions([_definition(source_id, url)])
    other_pool = await db.create_pool(base_settings)  # another replica: its own sessions
    replica_a = _scheduler(pool, publisher, definition)
    replica_b = _scheduler(other_pool, publisher, definition)
    slot = previous_slot(definition, datetime.now(UTC))
    try:
        outcomes = await asyncio.gather(
            replica_a.run(definition, trigger="schedule", slot=slot),
            replica_b.run(definition, trigger="schedule", slot=slot),
        )
        # A replica waking late for the same slot finds it done and does not run it.
        late = await replica_b.run(definition, trigger="schedule", slot=slot)
    finally:
        await replica_a.stop()
        await replica_b.stop()
        await other_pool.close()

    assert sorted(run.status for run in outcomes if run is not None) == ["ok", "skipped_locked"]
    assert late is None
    statuses = [row["status"] for row in await _runs(pool, source_id)]
    assert sorted(statuses) == ["ok", "skipped_locked"]
    assert len(state.requests) == 2  # one run's two pages, not two runs'
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=3)
    assert sorted(event_of(m)["record_key"] for m in messages) == ["E1", "E2", "E3"]


@pytest.mark.integration
async def test_a_failed_page_fails_the_run_and_keeps_the_cursor(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    erp: tuple[ErpRestState, str],
    source_id: str,
) -> None:
    state, url = erp
    for n in range(1, 4):
        state.upsert("empresas", _company(f"E{n}", f"2024-11-14T10:0{n}:00-03:00", f"E {n}"))
    (definition,) = parse_definitions([_definition(source_id, url)])
    scheduler = _scheduler(pool, publisher, definition)
    state.fail_pages = {2: 503}
    try:
        failed = await scheduler.run_now(source_id, wait=True)
        cursor_after_failure = await _cursor(pool, source_id)
        retried = await scheduler.run_now(source_id, wait=True)
    finally:
        await scheduler.stop()

    assert failed.status == "failed"
    assert failed.error is not None and "page 2" in failed.error and "503" in failed.error
    assert ERP_TOKEN not in failed.error
    assert (failed.cursor_before, failed.cursor_after) == (None, None)
    assert cursor_after_failure is None  # not advanced: the next run pulls page 1 again
    assert (retried.status, retried.rows_pulled) == ("ok", 3)
    assert retried.cursor_before is None
    stored = {row["id"]: row["status"] for row in await _runs(pool, source_id)}
    assert stored == {failed.id: "failed", retried.id: "ok"}
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=5)
    events = [event_of(message) for message in messages]
    # Page 1 was written twice, with the same event ids: the transform drops the repeat.
    assert len(events) == 5
    assert len({event["event_id"] for event in events}) == 3


@pytest.mark.integration
async def test_a_page_beyond_the_edge_limits_fails_the_run_naming_the_value(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    erp: tuple[ErpRestState, str],
    source_id: str,
) -> None:
    """Pulled pages go through the webhooks' strict decoder: a NUL in a value fails the
    run by name (path included) instead of reaching the raw topic to be stripped or
    refused later."""
    state, url = erp
    state.upsert("empresas", _company("E1", "2024-11-14T10:01:00-03:00", "X\u0000Y"))
    (definition,) = parse_definitions([_definition(source_id, url)])
    scheduler = _scheduler(pool, publisher, definition)
    try:
        failed = await scheduler.run_now(source_id, wait=True)
    finally:
        await scheduler.stop()
    assert failed.status == "failed" and failed.rows_pulled == 0
    assert failed.error is not None and "page 1" in failed.error
    assert "NUL" in failed.error and "$.data[0].nome" in failed.error, failed.error


@pytest.mark.integration
async def test_run_now_over_http_is_protected_and_answers_409_while_a_run_is_going(
    settings: Settings,
    pool: asyncpg.Pool,
    erp: tuple[ErpRestState, str],
    tmp_path: Path,
) -> None:
    state, url = erp
    state.upsert("empresas", _company("E1", "2024-11-14T10:00:00-03:00", "Um"))
    source_id = f"pull-{uuid.uuid4().hex[:8]}"
    sources = write_sources(
        tmp_path / "sources.yaml", [{"id": source_id, "kind": "erp", "secrets": [SECRET]}]
    )
    pulls = tmp_path / "pulls.yaml"
    pulls.write_text(yaml.safe_dump({"pulls": [_definition(source_id, url, daily="03:00")]}))
    running = settings.model_copy(update={"sources_file": sources, "pulls_file": pulls})
    auth = {"Authorization": f"Bearer {SECRET}"}
    async for ingest in serve_ingest(running):
        run_url = f"{ingest.url}/pulls/{source_id}/run"
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(run_url)).status_code == 401
            bad = await client.post(run_url, headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401
            state.delay_s = 0.5
            started = await client.post(run_url, headers=auth)
            busy = await client.post(run_url, headers=auth)
            assert started.status_code == 202, started.text
            assert started.json()["status"] == "running"
            assert busy.status_code == 409, busy.text
            assert busy.json()["run"]["status"] == "skipped_locked"

            async def status(url: str = f"{ingest.url}/pulls/{source_id}") -> Any:
                return (await client.get(url, headers=auth)).json()

            body = await eventually(
                status,
                satisfied=lambda body: all(run["status"] != "running" for run in body["runs"]),
                timeout_s=5,
                message="every pull run of the source to finish",
            )
            unknown = await client.post(f"{ingest.url}/pulls/nope/run", headers=auth)
    assert [run["status"] for run in body["runs"]] == ["skipped_locked", "ok"]
    assert body["schedule"] == "Diário às 03:00 (America/Sao_Paulo)"
    assert datetime.fromisoformat(body["next_run"]).astimezone(UTC).strftime("%H:%M") == "06:00"
    assert unknown.status_code == 404


def test_next_run_daily_is_the_wall_clock_time_in_sao_paulo() -> None:
    (definition,) = parse_definitions([_definition("erp-a", "http://erp", daily="02:00")])
    before = datetime(2024, 11, 14, 4, 0, tzinfo=UTC)  # 01:00 in São Paulo (UTC-3)
    assert next_run(definition, before) == datetime(2024, 11, 14, 5, 0, tzinfo=UTC)
    at = datetime(2024, 11, 14, 5, 0, tzinfo=UTC)
    assert next_run(definition, at) == datetime(2024, 11, 15, 5, 0, tzinfo=UTC)
    assert previous_slot(definition, at) == at
    assert previous_slot(definition, before) == datetime(2024, 11, 13, 5, 0, tzinfo=UTC)
    (lisbon,) = parse_definitions(
        [_definition("erp-b", "http://erp", daily="02:00", timezone="Europe/Lisbon")]
    )
    # Lisbon moves to summer time on 2024-03-31: 02:00 local is 01:00 UTC from then on.
    assert next_run(lisbon, datetime(2024, 3, 30, 3, 0, tzinfo=UTC)) == datetime(
        2024, 3, 31, 1, 0, tzinfo=UTC
    )


def test_next_run_every_minutes_and_online_are_on_a_shared_grid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        (every,) = parse_definitions([_definition("erp-a", "http://erp", every_minutes=15)])
    assert any("30 minutes" in record.getMessage() for record in caplog.records)
    now = datetime(2024, 11, 14, 12, 10, 7, tzinfo=UTC)
    assert next_run(every, now) == datetime(2024, 11, 14, 12, 15, tzinfo=UTC)
    assert next_run(every, datetime(2024, 11, 14, 12, 15, tzinfo=UTC)) == datetime(
        2024, 11, 14, 12, 30, tzinfo=UTC
    )
    (online,) = parse_definitions([_definition("erp-b", "http://erp", online=True)])
    assert next_run(online, now) == datetime(2024, 11, 14, 12, 10, 20, tzinfo=UTC)
    assert previous_slot(online, now) == datetime(2024, 11, 14, 12, 10, 0, tzinfo=UTC)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        parse_definitions([_definition("erp-c", "http://erp", every_minutes=30)])
    assert not caplog.records


def test_bad_definitions_are_refused_naming_the_field() -> None:
    both = _definition("erp-a", "http://erp", daily="02:00", online=True)
    with pytest.raises(ValueError, match=r"pulls\[0\]\.schedule: .*exactly one"):
        parse_definitions([both])
    late = _definition("erp-a", "http://erp", daily="25:00")
    with pytest.raises(ValueError, match=r"pulls\[0\]\.schedule\.daily: .*HH:MM"):
        parse_definitions([late])
    no_table = _definition("erp-a", "http://erp")
    del no_table["rows"]["table"]
    with pytest.raises(ValueError, match=r"pulls\[0\]\.rows\.table: Field required"):
        parse_definitions([no_table])
    token_without_path = _definition("erp-a", "http://erp")
    del token_without_path["request"]["pagination"]["token_path"]
    with pytest.raises(ValueError, match=r"pulls\[0\]\.request\.pagination: .*token_path"):
        parse_definitions([token_without_path])
    with pytest.raises(ValueError, match=r"pulls\[1\]\.source_id: .*two pulls"):
        parse_definitions([_definition("erp-a", "http://erp")] * 2)
    definitions = parse_definitions([_definition("shop", "http://erp")])
    shop = SourceConfig(id="shop", kind="shopify", secrets=["s"])
    with pytest.raises(ValueError, match=r"pulls\[0\]\.source_id: .*only erp"):
        check_sources(definitions, {"shop": shop})
    with pytest.raises(ValueError, match=r"pulls\[0\]\.source_id: no source 'shop'"):
        check_sources(definitions, {})
