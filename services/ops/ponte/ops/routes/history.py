"""``/ops/history``: the request history export and one request's log download."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import StringConstraints

from ponte.ops.auth import Operator
from ponte.ops.history import HistoryQuery, csv_chunks, history_batches, xlsx_chunks
from ponte.ops.moments import IsoDatetime
from ponte.shared.deps import PoolDep, SettingsDep
from ponte.shared.events import ERP_TIMEZONE
from ponte.shared.ops_token import UNAUTHORIZED
from ponte.shared.probes import IdQuery
from ponte.shared.problems import Problem, invalid_field
from ponte.shared.rejections import Rejection

router = APIRouter(prefix="/ops/history", tags=["history"], responses=UNAUTHORIZED)

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
MAX_REQUEST_ID = 2**63 - 1
"""``webhook_requests.id`` is a bigint: a larger id is a 422 here, not an overflow (500) in
asyncpg."""


def _aware(moment: datetime) -> datetime:
    """A time without an offset is read as the ERPs' local time (America/Sao_Paulo), which
    is what a consultant types into the page's form."""
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=ERP_TIMEZONE)


def _invalid(field: str, message: str) -> Rejection:
    return invalid_field(f"query.{field}", message)


def period(
    since: datetime | None, until: datetime | None, max_days: int
) -> tuple[datetime, datetime]:
    """The queried period: by default the last 24 hours; never longer than ``max_days``."""
    end = _aware(until) if until else datetime.now(UTC)
    try:
        start = _aware(since) if since else end - timedelta(days=1)
    except OverflowError:  # until in year 1: no day before it
        raise _invalid("until", "until is too early to have a day before it") from None
    if start >= end:
        raise _invalid("since", "since must be before until")
    if end - start > timedelta(days=max_days):
        raise _invalid(
            "until",
            f"the period may span at most {max_days} days per query (the 7-day limit of the "
            f"history export); this one spans {(end - start).total_seconds() / 86400:.1f} days",
        )
    return start, end


TableFilter = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f]*$")]
"""Table names, no control characters: a NUL reached PostgreSQL (which refuses it in text)
after the 200 had gone out, and the download broke off (schemathesis)."""

PERIOD_TOO_LONG = invalid_field(
    "query.until",
    "the period may span at most 7 days per query (the 7-day limit of the history export); "
    "this one spans 9131.0 days",
).body()
"""The 422 of ``?since=2000-01-01T00:00:00Z``, shown in the OpenAPI document."""


def _tables(tables: list[str] | None) -> list[str]:
    """Repeated ``tables=`` (the page's checkboxes) or comma-separated, both accepted."""
    return [name.strip() for value in tables or [] for name in value.split(",") if name.strip()]


@router.get(
    "/export",
    summary="Every request received in a period, with its response, as .xlsx or CSV",
    response_class=StreamingResponse,
    responses={
        200: {"content": {XLSX: {}, "text/csv": {}}, "description": "The history, streamed."},
        422: {
            "model": Problem,
            "description": "A bad period or filter; the error names the field. A period "
            "longer than `PONTE_HISTORY_MAX_DAYS` (7) days, or `since` not before `until`, "
            "is refused here: OpenAPI cannot say how two parameters relate.",
            "content": {"application/json": {"example": PERIOD_TOO_LONG}},
        },
    },
)
async def export(
    pool: PoolDep,
    settings: SettingsDep,
    _: Operator,
    source_id: IdQuery = None,
    tables: Annotated[
        list[TableFilter] | None,
        Query(description="Only requests for these tables (repeat, or comma-separated)."),
    ] = None,
    since: Annotated[
        IsoDatetime | None, Query(description="Start (default: until - 24 h).")
    ] = None,
    until: Annotated[
        IsoDatetime | None, Query(description="End, exclusive (default: now).")
    ] = None,
    format: Annotated[Literal["xlsx", "csv"], Query()] = "xlsx",
) -> StreamingResponse:
    start, end = period(since, until, settings.history_max_days)
    query = HistoryQuery(start, end, source_id, _tables(tables))
    name = _SAFE_NAME.sub("_", f"historico_{source_id or 'all'}_{start:%Y%m%d}_{end:%Y%m%d}")
    batches = history_batches(pool, query)
    body = xlsx_chunks(batches) if format == "xlsx" else csv_chunks(batches)
    return StreamingResponse(
        body,
        media_type=XLSX if format == "xlsx" else "text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.{format}"'},
    )


def _log(row: dict[str, Any]) -> dict[str, Any]:
    body = row.pop("body")
    if body is not None:
        try:
            row["request_body"] = body.decode()
        except UnicodeDecodeError:
            row["request_body"] = body.decode("latin-1")
    else:
        row["request_body"] = None
    return row


@router.get(
    "/{request_id}/log",
    summary="One request and its response (seed 001's 'Logs Download'), as JSON",
    responses={404: {"description": "No such request (or pruned after retention)."}},
)
async def request_log(
    request_id: Annotated[
        int,
        Path(ge=1, le=MAX_REQUEST_ID, description="The request's id (a PostgreSQL bigint)."),
    ],
    pool: PoolDep,
    _: Operator,
) -> Response:
    row = await pool.fetchrow("SELECT * FROM webhook_requests WHERE id = $1", request_id)
    if row is None:
        raise Rejection(404, "unknown_request", f"no request {request_id}", field="path.request_id")
    return Response(
        orjson.dumps(_log(dict(row)), option=orjson.OPT_INDENT_2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="request_{request_id}.json"'},
    )
