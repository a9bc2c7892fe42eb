"""What every service's routes declare by type (FastAPI's dependency injection): the
database pool and the settings, which each app's lifespan puts on ``app.state`` at start.

Async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per request for an attribute lookup."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from ponte.shared.settings import Settings


async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
