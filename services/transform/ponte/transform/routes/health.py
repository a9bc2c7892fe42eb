"""Probes and metrics for the transform: ready when the consumer is running and the
database answers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ponte.shared import db, probes
from ponte.shared.deps import PoolDep
from ponte.shared.http import draining
from ponte.shared.probes import READINESS_RESPONSES
from ponte.transform.deps import ConsumerDep

router = APIRouter(tags=["health"])


@router.get(
    "/readyz", responses=READINESS_RESPONSES, summary="Consuming the raw topic, database reachable"
)
async def readyz(request: Request, consumer: ConsumerDep, pool: PoolDep) -> JSONResponse:
    checks = {
        "consumer": consumer.running,
        "database": await db.ping(pool),
        "not_draining": not draining(request.app),
    }
    return probes.readiness(checks)
