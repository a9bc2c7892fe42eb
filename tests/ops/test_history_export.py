"""``/ops/history/export`` (seed 001's "Histórico"): every request of a period with its
response, filtered by source and table, as a workbook openpyxl opens or as CSV, never over
the 7-day limit. History rows are written by ingest's real ``HistoryWriter``."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from openpyxl import load_workbook

from ponte.ingest.history import HistoryEntry, HistoryWriter
from ponte.ops.history import BATCH_ROWS, COLUMNS
from tests.conftest import BOX
from tests.ops.conftest import RunningOps

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def request(source_id: str, table: str, at: datetime, n: int) -> HistoryEntry:
    body = json.dumps(
        {"table": table, "rows": [{"codigo": f"K-{n}", "nome": "Ação"}]}, ensure_ascii=False
    )
    return HistoryEntry(
        received_at=at,
        source_id=source_id,
        outcome="accepted" if n % 10 else "rejected",
        status_code=202 if n % 10 else 401,
        response_body={"records": 1, "n": n},
        latency_ms=1.25,
        size_bytes=len(body.encode()),
        tables=[table],
        event_id=f"evt-{n}",
        body=body.encode(),
    )


@pytest.fixture(scope="module")
async def history(pool: asyncpg.Pool, base_settings) -> str:  # type: ignore[no-untyped-def]
    """1,200 Pedido and 300 Empresa requests in the last hours (more than two export
    batches), 50 Pedido requests nine days ago, and another source's requests."""
    source_id = f"hx-{uuid.uuid4().hex[:8]}"
    writer = HistoryWriter(pool, base_settings)
    await writer.start()
    for n in range(1200):
        writer.record(request(source_id, "Pedido", NOW - timedelta(seconds=10 * n + 5), n))
    for n in range(300):
        writer.record(request(source_id, "Empresa", NOW - timedelta(seconds=7 * n + 3), n))
    for n in range(50):
        writer.record(request(source_id, "Pedido", NOW - timedelta(days=9, seconds=n), n))
    for n in range(20):
        writer.record(request("hx-other", "Pedido", NOW - timedelta(seconds=n + 1), n))
    await writer.stop()
    return source_id


async def test_xlsx_has_every_request_of_the_table_and_period(
    ops: RunningOps, history: str
) -> None:
    assert BATCH_ROWS < 1200  # the export really goes through several cursor batches
    params = {
        "source_id": history,
        "tables": "Pedido",
        "since": (NOW - timedelta(days=1)).isoformat(),
        "until": (NOW + timedelta(seconds=1)).isoformat(),
        "format": "xlsx",
    }
    async with ops.client() as client:
        answer = await client.get("/ops/history/export", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert "attachment" in answer.headers["content-disposition"]
    sheet = load_workbook(io.BytesIO(answer.content), read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    header, data = rows[0], rows[1:]
    assert header[0] == "request_id" and "response_body" in header
    assert len(data) == 1200
    column = {name: header.index(name) for name in header}
    assert {row[column["tables"]] for row in data} == {"Pedido"}
    assert {row[column["source_id"]] for row in data} == {history}
    times = [row[column["received_at_utc"]] for row in data]
    assert times == sorted(times)  # oldest first
    assert times[-1] == (NOW - timedelta(seconds=5)).replace(tzinfo=None)  # UTC, as labelled
    last = data[-1]
    assert json.loads(last[column["response_body"]]) == {"records": 1, "n": 0}
    assert '"nome": "Ação"' in last[column["request_body"]]
    assert last[column["status_code"]] == 401 and last[column["outcome"]] == "rejected"


async def test_csv_filters_by_several_tables(ops: RunningOps, history: str) -> None:
    params = [
        ("source_id", history),
        ("tables", "Pedido"),
        ("tables", "Empresa"),
        ("since", (NOW - timedelta(days=2)).isoformat()),
        ("until", (NOW + timedelta(seconds=1)).isoformat()),
        ("format", "csv"),
    ]
    async with ops.client() as client:
        answer = await client.get("/ops/history/export", params=params)
        only_empresa = await client.get(
            "/ops/history/export",
            params={**dict(params), "tables": "Empresa"},
        )
    assert answer.status_code == 200
    text = answer.content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == 1500
    assert sum(row["tables"] == "Empresa" for row in rows) == 300
    assert len(list(csv.DictReader(io.StringIO(only_empresa.content.decode("utf-8-sig"))))) == 300


async def test_a_period_without_offset_is_sao_paulo_time(ops: RunningOps, history: str) -> None:
    local = (NOW - timedelta(seconds=5)).astimezone(ZoneInfo("America/Sao_Paulo"))
    naive = local.replace(tzinfo=None)
    params = {
        "source_id": history,
        "tables": "Pedido",
        "since": (naive - timedelta(seconds=1)).isoformat(),
        "until": (naive + timedelta(seconds=1)).isoformat(),
        "format": "csv",
    }
    async with ops.client() as client:
        answer = await client.get("/ops/history/export", params=params)
    rows = list(csv.DictReader(io.StringIO(answer.content.decode("utf-8-sig"))))
    assert [row["event_id"] for row in rows] == ["evt-0"]


async def test_more_than_seven_days_is_refused_with_the_limit_named(
    ops: RunningOps, history: str
) -> None:
    async with ops.client() as client:
        too_long = await client.get(
            "/ops/history/export",
            params={
                "since": (NOW - timedelta(days=7, minutes=1)).isoformat(),
                "until": NOW.isoformat(),
            },
        )
        seven_days = await client.get(
            "/ops/history/export",
            params={
                "source_id": history,
                "since": (NOW - timedelta(days=7)).isoformat(),
                "until": NOW.isoformat(),
                "format": "csv",
            },
        )
        backwards = await client.get(
            "/ops/history/export",
            params={"since": NOW.isoformat(), "until": (NOW - timedelta(hours=1)).isoformat()},
        )
        bad_format = await client.get("/ops/history/export", params={"format": "pdf"})
    assert too_long.status_code == 422
    error = too_long.json()["problems"][0]
    assert error["field"] == "query.until" and "at most 7 days" in error["message"]
    assert seven_days.status_code == 200
    assert backwards.status_code == 422
    assert backwards.json()["problems"][0]["field"] == "query.since"
    assert bad_format.status_code == 422
    assert bad_format.json()["problems"][0]["field"] == "query.format"


async def test_the_export_needs_the_token(ops: RunningOps) -> None:
    async with ops.client(token=None) as anonymous:
        assert (await anonymous.get("/ops/history/export")).status_code == 401
        assert (await anonymous.get("/ops/history/1/log")).status_code == 401


async def test_a_request_warning_shows_in_the_export_the_log_and_the_page(
    ops: RunningOps,
    pool: asyncpg.Pool,
    base_settings,  # type: ignore[no-untyped-def]
) -> None:
    """A charset warning (``deliveries.charset_mismatch``) on an accepted request is in
    the export's ``warnings`` column, the request's log download and the source's page."""
    from ponte.shared.sources import SourceConfig, apply_sources

    source_id = f"hw-{uuid.uuid4().hex[:8]}"
    await apply_sources(
        pool,
        [SourceConfig.model_validate({"id": source_id, "kind": "erp", "secrets": ["s"]})],
        BOX,
    )
    entry = request(source_id, "Empresa", NOW - timedelta(seconds=1), 1)
    entry.warnings = ["body declared iso8859-1 is valid UTF-8 with multi-byte sequences"]
    writer = HistoryWriter(pool, base_settings)
    await writer.start()
    writer.record(entry)
    await writer.stop()
    params = {
        "source_id": source_id,
        "since": (NOW - timedelta(hours=1)).isoformat(),
        "until": (NOW + timedelta(seconds=1)).isoformat(),
        "format": "csv",
    }
    async with ops.client() as client:
        export = await client.get("/ops/history/export", params=params)
        page = await client.get(f"/ops/sources/{source_id}")
        [run] = page.json()["recent_runs"]
        log = await client.get(run["log_url"])
    [row] = list(csv.DictReader(io.StringIO(export.content.decode("utf-8-sig"))))
    assert row["warnings"] == entry.warnings[0]
    assert run["warnings"] == entry.warnings
    assert log.json()["warnings"] == entry.warnings
