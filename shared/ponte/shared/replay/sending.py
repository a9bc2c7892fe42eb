"""Producing what a replay sends back, acknowledged (``acks=all``) before it returns."""

from __future__ import annotations

import asyncio

from ponte.shared import kafka
from ponte.shared.replay.items import Outgoing
from ponte.shared.settings import Settings


async def send(settings: Settings, messages: list[Outgoing]) -> None:
    """Every message, in the given order (one key's messages keep theirs: one partition,
    one producer), and every acknowledgement awaited; a refusal raises."""
    if not messages:
        return
    producer = kafka.create_producer(settings)
    await producer.start()
    try:
        acks = [
            await producer.send(
                message.topic,
                key=message.key,
                value=message.value,
                headers=list(message.headers),
            )
            for message in messages
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
