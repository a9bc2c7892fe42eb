"""Probes and metrics for the transform: ready when the consumer is running and the
database answers."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ponte.shared import db
from ponte.shared.http import draining
from ponte.transform.deps import ConsumerDep, PoolDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Consuming the raw topic, database reachable")
async def readyz(request: Request, consumer: ConsumerDep, pool: PoolDep) -> JSONResponse:
    checks = {
        "consumer": consumer.running,
        "database": await db.ping(pool),
        "not_draining": not draining(request.app),
    }
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
