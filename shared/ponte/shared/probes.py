"""``/healthz`` (the process is alive) and ``/metrics`` (Prometheus), the same in every
service. Each service adds its own ``/readyz``, since what "ready" needs differs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])

READINESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Ready: every check passed."},
    503: {
        "description": "Not ready (or draining): the body's checks say which failed; also "
        "in the one error shape (`not_ready`, the message names the failed checks)."
    },
}
"""The answers every ``/readyz`` documents."""

IdQuery = Annotated[
    str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="An id.")
]
"""A source, target or state filter: ids are short and plain, anything else is a 422."""


def readiness(checks: dict[str, bool]) -> JSONResponse:
    """A ``/readyz`` answer: 200 when every check passed, else 503 in the one error shape
    (``ponte.shared.problems``) with the checks alongside."""
    failed = [name for name, passed in checks.items() if not passed]
    if not failed:
        return JSONResponse({"ready": True, "checks": checks})
    body = {
        "error": "not_ready",
        "message": f"not ready: {', '.join(failed)} failed",
        "ready": False,
        "checks": checks,
    }
    return JSONResponse(body, status_code=503)


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
