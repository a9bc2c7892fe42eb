"""Dependencies the transform's routes declare by type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ponte.transform.consumer import TransformConsumer


async def get_consumer(request: Request) -> TransformConsumer:
    consumer: TransformConsumer = request.app.state.consumer
    return consumer


ConsumerDep = Annotated[TransformConsumer, Depends(get_consumer)]
