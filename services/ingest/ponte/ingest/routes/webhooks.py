"""``POST /webhooks/{source_id}``: the door every ERP and shop knocks on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from ponte.ingest.deps import IntakeDep
from ponte.ingest.intake import IncomingRequest, Intake
from ponte.shared import problems
from ponte.shared.problems import Problem

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


class Accepted(BaseModel):
    event_id: str = Field(
        description="Ponte's id of the delivery; a re-sent delivery gets the same id."
    )
    records: int | None = Field(default=None, description="Record events written to Kafka.")
    duplicate: bool = Field(description="True when this delivery was already accepted earlier.")


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description}
    for status, description in {
        400: "Body not JSON, not valid in its declared charset, or a shop topic header missing.",
        401: "Signature missing, wrong, or its timestamp outside the tolerance (replay).",
        403: "Client address not in the source's allowlist, or table not allowed.",
        404: "Unknown or inactive source.",
        409: "The same delivery is being accepted by a concurrent request; retry later.",
        413: "Body over the configured limit.",
        415: "Unknown charset declared in Content-Type, or (a source with `charset: strict`) "
        "a single-byte charset declared on a body that is valid UTF-8 with multi-byte "
        "sequences (`charset_mismatch`).",
        422: "Not a valid envelope, or beyond the edge's limits (depth, number size, NUL, lone "
        "surrogates, duplicate keys); the message names the field or JSON path.",
        500: "An unforeseen failure; nothing was accepted, the request is recorded. Retry later.",
        503: "The broker did not acknowledge in time; nothing was accepted. Retry later.",
    }.items()
}


@router.post(
    "/{source_id}",
    status_code=202,
    response_model=Accepted,
    responses={
        200: {"model": Accepted, "description": "A duplicate (or a WooCommerce ping)."},
        **_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "Ponte's ERP envelope, or a Shopify / "
                        "WooCommerce webhook payload, signed per the source's kind.",
                    }
                }
            },
        }
    },
    summary="Receive one signed webhook delivery",
)
async def receive_webhook(source_id: str, request: Request, intake: IntakeDep) -> JSONResponse:
    """Answers 202 only once the broker has acknowledged every record event of the
    delivery. Authentication depends on the source's kind: Standard Webhooks headers for
    ERPs, ``X-Shopify-Hmac-Sha256`` for Shopify, ``X-WC-Webhook-Signature`` for
    WooCommerce."""
    return await _answer(source_id, request, intake)


async def _answer(source_id: str, request: Request, intake: Intake) -> JSONResponse:
    answer = await intake.handle(
        IncomingRequest(
            source_id=source_id,
            headers=request.headers,
            peer=request.client.host if request.client else None,
            forwarded_for=", ".join(request.headers.getlist("x-forwarded-for")) or None,
            body_chunks=request.stream(),
        )
    )
    return JSONResponse(answer.body, status_code=answer.status_code, headers=answer.headers)


WEBHOOK_ROUTE = Route("/webhooks/{source_id}", receive_webhook, methods=["POST"])
"""Only matched against, never served: Starlette's own path matching (root path, path
parameter rules) decides which requests take the plain ASGI path below."""


_SOURCES_MAX = 10_000
_sources: dict[tuple[str, str], str | None] = {}
"""``WEBHOOK_ROUTE``'s answer per (root path, path): a handful of source ids call again
and again, and the match (a regular expression, the path converters, a child scope) was
a measurable share of each webhook. Bounded, as the path comes from the client."""


def webhook_source(scope: Scope) -> str | None:
    """The source id when ``scope`` is ``POST /webhooks/{source_id}``, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    # Route.matches reads only the path and the root path (and the type, checked above).
    where = (scope.get("root_path", ""), scope["path"])
    try:
        return _sources[where]
    except KeyError:
        pass
    match, child = WEBHOOK_ROUTE.matches(scope)
    source_id: str | None = child["path_params"]["source_id"] if match is Match.FULL else None
    if len(_sources) >= _SOURCES_MAX:
        _sources.clear()
    _sources[where] = source_id
    return source_id


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as uvicorn hands it over, like Starlette's ``Request.stream``."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def serve_webhook(
    intake: Intake, source_id: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """``POST /webhooks/{source_id}`` as a plain ASGI handler: what serves the requests.

    FastAPI's and Starlette's per-request machinery (middleware stack, exception
    handlers, dependency solving, Request and Response objects) cost about a third of
    ingest's CPU per webhook in the benchmark (bench/ingest.py, docs/benchmarks.md), for
    an endpoint that needs none of it. The FastAPI route above stays registered so the
    OpenAPI document describes the endpoint; both call ``Intake.handle``."""
    headers, forwarded = _read_headers(scope["headers"])
    client = scope.get("client")
    try:
        answer = await intake.handle(
            IncomingRequest(
                source_id=source_id,
                headers=headers,
                peer=client[0] if client else None,
                forwarded_for=", ".join(forwarded) or None,
                body_chunks=_body_chunks(receive),
            )
        )
    except ClientDisconnect:
        return  # nobody to answer; as Starlette, nothing was accepted or recorded
    except Exception:
        # What Starlette's ServerErrorMiddleware does: a 500 (in the one error shape),
        # then re-raise so that uvicorn logs the traceback.
        await _send(send, 500, _INTERNAL_ERROR, [(b"content-type", _JSON)])
        raise
    body = orjson.dumps(answer.body)
    raw_headers = [(b"content-type", _JSON)]
    raw_headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in answer.headers.items()
    )
    await _send(send, answer.status_code, body, raw_headers)


def _read_headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], list[str]]:
    """The request headers decoded once into a dict, and every X-Forwarded-For line.

    What Starlette's ``Headers`` answers, at a third of the CPU: intake asks for about ten
    headers per webhook, and ``Headers`` scans and decodes the raw list on every lookup.
    Names arrive lowercased (ASGI); a repeated header reads as its first line, as
    ``Headers.get`` does. ``test_webhook_asgi.py`` compares the two."""
    headers: dict[str, str] = {}
    forwarded: list[str] = []
    for name, value in raw:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        if key not in headers:
            headers[key] = text
        if key == "x-forwarded-for":
            forwarded.append(text)
    return headers, forwarded


_JSON = b"application/json"
_INTERNAL_ERROR = orjson.dumps(problems.body(problems.CODES[500], problems.MESSAGES[500]))


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
