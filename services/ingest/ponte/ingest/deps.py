"""Dependencies the routes declare by type, so signatures read like the domain.

Async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop per request for a dictionary lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ponte.ingest.intake import Intake
from ponte.ingest.publisher import EventPublisher
from ponte.ingest.registry import SourceRegistry


async def get_intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


async def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


async def get_registry(request: Request) -> SourceRegistry:
    registry: SourceRegistry = request.app.state.registry
    return registry


IntakeDep = Annotated[Intake, Depends(get_intake)]
PublisherDep = Annotated[EventPublisher, Depends(get_publisher)]
RegistryDep = Annotated[SourceRegistry, Depends(get_registry)]
