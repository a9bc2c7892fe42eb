"""Probes and metrics: ``/healthz`` (process alive), ``/readyz`` (broker and database
reachable: a pod that cannot acknowledge webhooks takes no traffic), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ponte.ingest.deps import PublisherDep, RegistryDep
from ponte.shared import db, probes
from ponte.shared.deps import PoolDep
from ponte.shared.http import draining
from ponte.shared.probes import READINESS_RESPONSES

router = APIRouter(tags=["health"])


@router.get(
    "/readyz", responses=READINESS_RESPONSES, summary="The broker and the database are reachable"
)
async def readyz(
    request: Request, publisher: PublisherDep, pool: PoolDep, registry: RegistryDep
) -> JSONResponse:
    broker, database = await asyncio.gather(publisher.ready(), db.ping(pool))
    checks = {
        "broker": broker,
        "database": database,
        "sources_loaded": registry.loaded,
        "not_draining": not draining(request.app),
    }
    return probes.readiness(checks)
