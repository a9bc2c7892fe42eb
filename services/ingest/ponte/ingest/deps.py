"""Dependencies the routes declare by type, so signatures read like the domain."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from ponte.ingest.intake import Intake
from ponte.ingest.publisher import EventPublisher
from ponte.ingest.registry import SourceRegistry


def get_intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def get_registry(request: Request) -> SourceRegistry:
    registry: SourceRegistry = request.app.state.registry
    return registry


IntakeDep = Annotated[Intake, Depends(get_intake)]
PublisherDep = Annotated[EventPublisher, Depends(get_publisher)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
RegistryDep = Annotated[SourceRegistry, Depends(get_registry)]
