"""File drops and scheduled pulls over HTTP: ``POST /files/{source_id}`` (a CSV or Excel
sheet of one table), ``POST /pulls/{source_id}/run`` (seed 001's "Executar agora") and
``GET /pulls/{source_id}`` (schedule, next run, last runs, for the ops page).

These are called by people and scripts, not by an ERP's webhook sender, so they are not
signed: they take ``Authorization: Bearer <token>``, where the token is one of the source's
secrets or the ops token (``PONTE_OPS_TOKEN``), compared in constant time.
"""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from ponte.ingest import file_drops
from ponte.ingest.publisher import BrokerUnavailable, EventPublisher
from ponte.ingest.pulls.runs import last_runs
from ponte.ingest.pulls.scheduler import PullScheduler, UnknownPull
from ponte.ingest.registry import KnownSource, SourceRegistry
from ponte.shared.events import Operation
from ponte.shared.mapping import mapping_for
from ponte.shared.metrics import INGEST_EVENTS, INGEST_LAST_ACCEPTED
from ponte.shared.ops_token import configured_token
from ponte.shared.parsers import ParseError, parse_datetime
from ponte.shared.problems import Problem
from ponte.shared.pulls import next_run
from ponte.shared.rejections import Rejection
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind, spec_of

router = APIRouter(tags=["pulls and files"])

_PROBLEM: dict[str, Any] = {"model": Problem}


def _problem(rejection: Rejection) -> JSONResponse:
    return JSONResponse(
        rejection.body(), status_code=rejection.status_code, headers=rejection.headers
    )


def _source(request: Request, source_id: str) -> KnownSource:
    registry: SourceRegistry = request.app.state.registry
    source = registry.get(source_id)
    if source is None or not source.config.active:
        raise Rejection(
            404, "unknown_source", f"source {source_id!r} is unknown or inactive", field="source_id"
        )
    if not spec_of(source.config.kind).pulls_and_files:
        raise Rejection(
            404,
            "not_an_erp_source",
            f"source {source_id!r} is {source.config.kind.value}; only erp sources take files "
            "and pulls",
            field="source_id",
        )
    return source


def authorize(request: Request, source: KnownSource) -> None:
    """The bearer token must be one of the source's secrets or the ops token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Rejection(
            401,
            "missing_token",
            "Authorization: Bearer <source secret or ops token> is required",
            field="authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
    settings: Settings = request.app.state.settings
    candidates = list(source.config.secrets)
    if ops_token := configured_token(settings):
        candidates.append(ops_token)
    given = token.strip().encode()
    # Every candidate is compared, so the time taken does not say which one nearly matched.
    matches = [hmac.compare_digest(given, candidate.encode()) for candidate in candidates]
    if not any(matches):
        raise Rejection(
            401,
            "bad_token",
            "the bearer token is not valid for this source",
            field="authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = Rejection(413, "body_too_large", f"body is over {limit} bytes", field="body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _uploaded(
    body: bytes, content_type: str
) -> tuple[bytes, str | None, str | None, dict[str, str]]:
    """The file of a multipart/form-data body (part ``file``, else the first with a file
    name), its type and name, and the plain form fields. Parsed with the standard library's
    MIME parser: the route needs one file, not a form framework."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    assert isinstance(message, EmailMessage)
    fields: dict[str, str] = {}
    found: tuple[bytes, str | None, str | None] | None = None
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if name == "file" or (filename and found is None):
            declared = part.get("content-type")
            found = (data, str(declared) if declared else None, filename)
        elif isinstance(name, str):
            fields[name] = data.decode("utf-8", "replace").strip()
    if found is None:
        raise Rejection(
            422, "missing_file", "the form has no file part (name it 'file')", field="file"
        )
    return (*found, fields)


class _Table:
    """The table's key fields and value types, from the source's mapping."""

    def __init__(self, settings: Settings, source_id: str, table: str) -> None:
        mapping = mapping_for(SourceKind.ERP, source_id, settings.mappings_dir)
        found = mapping.table(table)
        if found is None:
            raise Rejection(
                422,
                "unknown_table",
                f"table {table!r} is not in the source's mapping "
                f"(known: {', '.join(sorted(mapping.tables))})",
                field="table",
            )
        self.name = next(name for name, spec in mapping.tables.items() if spec is found)
        self.key_fields = mapping.record_key_fields().get(self.name) or []
        self.types = {
            name: spec.value_type
            for name in found.fields
            if (spec := found.field(name)) is not None and not spec.ignore
        }


def _occurred_at(value: str | None, received_at: datetime) -> datetime:
    if value is None:
        return received_at
    try:
        parsed = parse_datetime(value)
    except ParseError as error:
        raise Rejection(422, "invalid_occurred_at", str(error), field="occurred_at") from None
    return parsed or received_at


@router.post(
    "/files/{source_id}",
    status_code=202,
    summary="Drop a CSV or Excel sheet of one ERP table",
    responses={
        200: {"description": "Not used."},
        401: {"description": "Bearer token missing or wrong.", **_PROBLEM},
        403: {"description": "Table not allowed for the source.", **_PROBLEM},
        404: {"description": "Unknown, inactive or non-ERP source.", **_PROBLEM},
        413: {"description": "File over PONTE_MAX_BODY_BYTES.", **_PROBLEM},
        415: {"description": "Neither CSV nor .xlsx, or an unknown charset.", **_PROBLEM},
        422: {"description": "Unreadable file, unknown table, or every row refused.", **_PROBLEM},
        503: {"description": "The broker did not acknowledge; nothing accepted.", **_PROBLEM},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                file_drops.XLSX_TYPE: {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
            },
        }
    },
)
async def drop_file(
    source_id: str,
    request: Request,
    table: Annotated[str | None, Query(description="The ERP table, e.g. Pedido.")] = None,
    sheet: Annotated[str | None, Query(description="Excel sheet; default: the first.")] = None,
    operation: Annotated[Literal["upsert", "delete"], Query()] = "upsert",
    occurred_at: Annotated[
        str | None, Query(description="When the data is from (default: now).")
    ] = None,
) -> JSONResponse:
    """Answers 202 with ``{accepted, rejected: [{row, field, reason}]}`` once the broker
    has acknowledged every accepted row (``acks=all``); rows are numbered as a spreadsheet
    shows them (the header is row 1)."""
    try:
        return await _drop_file(request, source_id, table, sheet, operation, occurred_at)
    except Rejection as rejection:
        return _problem(rejection)


async def _drop_file(
    request: Request,
    source_id: str,
    table: str | None,
    sheet: str | None,
    operation: str,
    occurred_at: str | None,
) -> JSONResponse:
    received_at = datetime.now(UTC)
    settings: Settings = request.app.state.settings
    source = _source(request, source_id)
    authorize(request, source)
    body = await _read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type")
    filename: str | None = None
    if (content_type or "").lower().startswith("multipart/form-data"):
        body, content_type, filename, fields = _uploaded(body, content_type or "")
        table = table or fields.get("table")
        sheet = sheet or fields.get("sheet")
    if not table:
        raise Rejection(422, "missing_table", "parameter table is required", field="table")
    if not source.config.allows_table(table):
        raise Rejection(
            403, "table_not_allowed", f"table {table!r} is not allowed for source", field="table"
        )
    known = _Table(settings, source_id, table)
    drop = file_drops.build_drop(
        source_id=source_id,
        table=known.name,
        sheet=file_drops.read_sheet(body, content_type, filename, sheet),
        digest=file_drops.file_digest(body),
        key_fields=known.key_fields,
        field_types=known.types,
        operation=Operation(operation),
        occurred_at=_occurred_at(occurred_at, received_at),
        received_at=received_at,
    )
    if not drop.events:
        return JSONResponse(
            {"error": "no_valid_rows", "message": "no row was accepted", **drop.report()},
            status_code=422,
        )
    publisher: EventPublisher = request.app.state.publisher
    try:
        await publisher.publish(drop.events, content_type)
    except BrokerUnavailable as error:
        raise Rejection(
            503,
            "broker_unavailable",
            f"file not accepted: {error}; retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        ) from None
    INGEST_EVENTS.labels(source_id).inc(len(drop.events))
    INGEST_LAST_ACCEPTED.labels(source_id).set(time.time())
    return JSONResponse(drop.report(), status_code=202)


@router.post(
    "/pulls/{source_id}/run",
    status_code=202,
    summary='Run a source\'s pull now ("Executar agora")',
    responses={
        200: {"description": "With wait=true: the finished run."},
        401: {"description": "Bearer token missing or wrong.", **_PROBLEM},
        404: {"description": "Unknown source, or no pull defined for it.", **_PROBLEM},
        409: {"description": "A run of this source is going (here or on another replica)."},
    },
)
async def run_pull(
    source_id: str,
    request: Request,
    wait: Annotated[bool, Query(description="Answer when the run has finished.")] = False,
) -> JSONResponse:
    """Starts a run and answers 202 with its record once it holds the source's lock (or,
    with ``wait``, 200 once it has finished); 409 when a run of the source is going."""
    try:
        source = _source(request, source_id)
        authorize(request, source)
        scheduler: PullScheduler = request.app.state.pulls
        try:
            record = await scheduler.run_now(source_id, wait=wait)
        except UnknownPull:
            raise Rejection(
                404, "no_pull", f"no pull is defined for source {source_id!r}", field="source_id"
            ) from None
    except Rejection as rejection:
        return _problem(rejection)
    if record.status == "skipped_locked":
        body = {"error": "run_in_progress", "message": "a run of this source is going"}
        return JSONResponse({**body, "run": record.public()}, status_code=409)
    return JSONResponse(record.public(), status_code=200 if wait else 202)


@router.get(
    "/pulls/{source_id}",
    summary="A source's pull: schedule, next run, last runs",
    responses={
        401: {"description": "Bearer token missing or wrong.", **_PROBLEM},
        404: {"description": "Unknown source, or no pull defined for it.", **_PROBLEM},
    },
)
async def pull_status(
    source_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> JSONResponse:
    try:
        source = _source(request, source_id)
        authorize(request, source)
    except Rejection as rejection:
        return _problem(rejection)
    scheduler: PullScheduler = request.app.state.pulls
    definition = scheduler.definitions.get(source_id)
    if definition is None:
        return _problem(
            Rejection(404, "no_pull", f"no pull is defined for {source_id!r}", field="source_id")
        )
    body: dict[str, Any] = {
        "source_id": source_id,
        "active": definition.active,
        "schedule": definition.schedule.describe(),
        "next_run": next_run(definition, datetime.now(UTC)).isoformat()
        if definition.active
        else None,
        "runs": [run.public() for run in await last_runs(request.app.state.pool, source_id, limit)],
    }
    return JSONResponse(body)
