"""Dependencies the transform's routes declare by type."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from ponte.transform.consumer import TransformConsumer


async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def get_consumer(request: Request) -> TransformConsumer:
    consumer: TransformConsumer = request.app.state.consumer
    return consumer


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
ConsumerDep = Annotated[TransformConsumer, Depends(get_consumer)]
