"""``/readyz``: the ops service is ready when PostgreSQL answers (everything it shows is
there; replay also needs the broker, and says so in its own error)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ponte.shared import db, probes
from ponte.shared.deps import PoolDep
from ponte.shared.http import draining
from ponte.shared.probes import READINESS_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/readyz", responses=READINESS_RESPONSES, summary="The database is reachable")
async def readyz(request: Request, pool: PoolDep) -> JSONResponse:
    checks = {"database": await db.ping(pool), "not_draining": not draining(request.app)}
    return probes.readiness(checks)
