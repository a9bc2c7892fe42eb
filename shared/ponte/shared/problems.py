"""One error shape for every service: the body of every 4xx and 5xx answer, and the
exception handlers and OpenAPI declarations that make it so.

``{"error": <stable code>, "message": <what is wrong>, "field": <optional>, "problems":
<optional list of {"field", "message", "type"}>}``. ``message`` names the field and the
reason, never the rejected input (it may be a secret, or a customer's personal data).

``install(app)`` is called by every service's ``create_app``: it answers a ``Rejection``,
an ``HTTPException``, a request validation error and an unforeseen failure in this shape,
and declares ``Problem`` as the schema of every error response in the app's OpenAPI
document (so schemathesis checks the bodies against it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ponte.shared.rejections import Rejection
from ponte.shared.validation_errors import field_path

log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    """One invalid field of a request."""

    field: str = Field(description="Where: `query.until`, `body.add_secret`, `path.id`.")
    message: str = Field(description="What is wrong with it (never the value sent).")
    type: str = Field(description="Stable machine-readable kind, e.g. `missing`.")


class Problem(BaseModel):
    """The body of every error answer, in every service."""

    error: str = Field(description="Stable machine-readable reason, e.g. `bad_signature`.")
    message: str = Field(description="What is wrong, naming the field or header at fault.")
    field: str | None = Field(default=None, description="The field or header at fault.")
    problems: list[FieldProblem] | None = Field(
        default=None, description="Every invalid field, for a request that fails validation."
    )


INVALID_REQUEST = "invalid_request"

CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: INVALID_REQUEST,
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}
"""The code of an ``HTTPException`` that carries none of its own (a framework's)."""

MESSAGES: dict[int, str] = {
    404: "nothing is served at this path",
    405: "this path does not serve this method; the Allow header lists those it does",
    500: "an unforeseen failure; nothing was changed by this request, retry later",
}
"""The message of a framework's ``HTTPException``, whose detail is only the status' phrase."""


def code_for(status: int) -> str:
    if status in CODES:
        return CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "client_error" if status < 500 else "server_error"


def body(
    error: str,
    message: str,
    *,
    field: str | None = None,
    problems: Sequence[FieldProblem] | None = None,
) -> dict[str, Any]:
    """The JSON body (absent optional members left out)."""
    return Problem(
        error=error, message=message, field=field, problems=list(problems) if problems else None
    ).model_dump(exclude_none=True)


def answer(
    status: int,
    error: str,
    message: str,
    *,
    field: str | None = None,
    problems: Sequence[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        body(error, message, field=field, problems=problems),
        status_code=status,
        headers=headers or None,
    )


def field_problems(errors: Sequence[Any], prefix: Sequence[str] = ()) -> list[FieldProblem]:
    """Pydantic's or FastAPI's error items (location, message, type), without the input."""
    return [
        FieldProblem(
            field=field_path([*prefix, *item["loc"]], "body"),
            message=str(item["msg"]),
            type=str(item["type"]),
        )
        for item in errors
    ]


def invalid(problems: Sequence[FieldProblem]) -> Rejection:
    """A 422 naming every invalid field; the first is ``field``."""
    message = "; ".join(f"{problem.field}: {problem.message}" for problem in problems)
    return Rejection(
        422,
        INVALID_REQUEST,
        message or "the request is invalid",
        field=problems[0].field if problems else None,
        problems=[problem.model_dump() for problem in problems],
    )


def invalid_field(field: str, message: str, type: str = "value_error") -> Rejection:
    """A 422 for one field, e.g. a rule between two query parameters."""
    return invalid([FieldProblem(field=field, message=message, type=type)])


def rejected(rejection: Rejection) -> JSONResponse:
    return JSONResponse(
        rejection.body(), status_code=rejection.status_code, headers=rejection.headers or None
    )


async def rejection_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, Rejection)
    return rejected(error)


def from_http_exception(error: StarletteHTTPException) -> JSONResponse:
    """An ``HTTPException`` in the one shape: its detail, when it is already a problem (a
    dict with ``error`` and ``message``) or a text, else the status' code and message."""
    status, detail, headers = error.status_code, error.detail, dict(error.headers or {})
    if status < 400:  # not an error: a bare answer, as Starlette gives
        return JSONResponse(None, status_code=status, headers=headers or None)
    if isinstance(detail, dict) and "error" in detail and "message" in detail:
        return JSONResponse(jsonable_encoder(detail), status_code=status, headers=headers or None)
    if isinstance(detail, list):  # FastAPI's validation items
        return rejected(invalid(field_problems(detail)))
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    message = detail if isinstance(detail, str) and detail and detail != phrase else None
    return answer(
        status,
        code_for(status),
        message or MESSAGES.get(status, phrase.lower() or "the request failed"),
        headers=headers,
    )


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    return from_http_exception(error)


async def validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's 422, without the rejected input: the field and the reason say enough."""
    assert isinstance(error, RequestValidationError)
    return rejected(invalid(field_problems(error.errors())))


async def internal_error(request: Request, error: Exception) -> Response:
    """An unforeseen failure: 500 in the one shape (Starlette still re-raises it, so the
    server logs the traceback)."""
    return answer(500, CODES[500], MESSAGES[500])


def _is_error(status: str) -> bool:
    return status[:1] in {"4", "5"}


_REF = "#/components/schemas/Problem"


def declare(document: dict[str, Any]) -> dict[str, Any]:
    """``Problem`` as the JSON schema of every error response of ``document`` (examples
    kept), replacing FastAPI's own 422 schema."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas["Problem"] = schema
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                if not _is_error(str(status)):
                    continue
                content = response.setdefault("content", {})
                json_content = content.setdefault("application/json", {})
                json_content["schema"] = {"$ref": _REF}
    text = str(document.get("paths", {}))
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}'" not in text:
            schemas.pop(unused, None)
    return document


def install(app: FastAPI) -> None:
    """Every error of ``app`` in the one shape, and declared so in its document."""
    app.add_exception_handler(Rejection, rejection_handler)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
