"""Dependencies the routes declare by type, so signatures read like the domain."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from ponte.ops.status import Schedules
from ponte.shared.settings import Settings


async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_pulls(request: Request) -> Schedules:
    pulls: Schedules = request.app.state.pulls
    return pulls


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
PullsDep = Annotated[Schedules, Depends(get_pulls)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
