"""How the ops service answers what the routes never see: a method the path does not serve
(405), a body that is not JSON at all (422) and a query parameter sent twice (422); every answer is
in the one error shape of ``ponte.shared.problems``.

Three framework defaults are replaced here, all found by schemathesis (tests/test_openapi.py):

- Starlette answers a method a path does not serve with 405 and the ``Allow`` of the
  first route whose path matched, though several routes may share a path
  (``/ops/sources/{source_id}`` is GET in one route and PATCH in another): the answer
  said ``Allow: GET`` while PATCH is served. RFC 9110 §10.2.1 says ``Allow`` lists the
  methods the target resource supports, so it is recomputed by asking the routes which
  methods they serve at that path.
- FastAPI answers 400 "There was an error parsing the body" when the body is not UTF-8
  (``json.loads`` raises ``UnicodeDecodeError`` before it can say ``JSONDecodeError``),
  but 422 ``json_invalid`` for every other body that is not JSON. RFC 8259 §8.1 makes
  UTF-8 part of JSON, so both are the same client error: 422, as documented on every route
  that takes a body.
- FastAPI reads a one-value query parameter sent twice (``?source_id=a&source_id=b``) as
  its last value, silently. The document says one value, so two are a 422 naming it;
  which parameters take one value is read from the document itself, so the rule cannot
  drift from what clients are told.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ponte.shared import problems
from ponte.shared.problems import FieldProblem

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allowed_methods(request: Request) -> list[str]:
    """Every method the router would serve at the request's path, found by asking each
    route whether it matches the path with that method. Routing decides, so ``Allow``
    cannot differ from what is served (FastAPI's GET routes do not serve HEAD: not listed);
    ``matches`` is Starlette's route API, which FastAPI's included routers implement too."""
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


def not_json() -> Response:
    return problems.rejected(
        problems.invalid_field(
            "body", "the body is not JSON (JSON is UTF-8 text)", type="json_invalid"
        )
    )


async def http_error(request: Request, error: Exception) -> Response:
    """The shared answer to an ``HTTPException`` (``ponte.shared.problems``), but for the
    two cases above."""
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 400 and isinstance(error.__cause__, UnicodeDecodeError):
        return not_json()
    if error.status_code == 405:
        error.headers = {**(error.headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return problems.from_http_exception(error)


def _takes_a_list(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(map(_takes_a_list, schema.get("anyOf", [])))


def one_value_query_parameters(app: FastAPI) -> dict[tuple[str, str], frozenset[str]]:
    """Per (method, path) of the document, its query parameters that take one value.
    Built once, from the same document ``/openapi.json`` serves."""
    cached: dict[tuple[str, str], frozenset[str]] | None = getattr(
        app.state, "one_value_query_parameters", None
    )
    if cached is None:
        cached = {
            (method.upper(), path): frozenset(
                parameter["name"]
                for parameter in operation.get("parameters", [])
                if parameter["in"] == "query" and not _takes_a_list(parameter["schema"])
            )
            for path, item in app.openapi()["paths"].items()
            for method, operation in item.items()
        }
        app.state.one_value_query_parameters = cached
    return cached


async def single_query_values(request: Request) -> None:
    """A dependency of the whole app: a one-value query parameter sent twice is a 422."""
    route = request.scope.get("route")
    path = getattr(route, "path_format", None)
    names = one_value_query_parameters(request.app).get((request.method, str(path)), frozenset())
    repeated = sorted(name for name in names if len(request.query_params.getlist(name)) > 1)
    if repeated:
        raise problems.invalid(
            [
                FieldProblem(
                    field=f"query.{name}", message="give one value, not several", type="value_error"
                )
                for name in repeated
            ]
        )
