"""The webhook's side of the status topic: a received batch is acknowledged only once the
broker holds every event (``acks=all``), so that HubSpot re-sends whatever Ponte could not
keep, and durability never depends on the origin being up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ponte.deliver.status_back.metrics import STATUS_BACK_EVENTS
from ponte.shared.settings import Settings


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time; the webhook must not be acknowledged."""


async def publish_batch(
    producer: AIOKafkaProducer, settings: Settings, target_id: str, events: list[dict[str, Any]]
) -> None:
    """Every event in the status topic and acknowledged, or ``BrokerUnavailable``. Events
    are keyed ``target/objectId``: one deal's events stay in one partition, in order."""
    received_at = datetime.now(UTC).isoformat()
    try:
        async with asyncio.timeout(settings.produce_timeout_s):
            acks = [
                await producer.send(
                    settings.status_topic,
                    value=orjson.dumps(
                        {"target": target_id, "received_at": received_at, "event": event}
                    ),
                    key=f"{target_id}/{event['objectId']}".encode(),
                    headers=[
                        ("ponte-target", target_id.encode()),
                        ("ponte-crm-event-id", str(event["eventId"]).encode()),
                    ],
                )
                for event in events
            ]
            # asyncio.wait, not gather: on our timeout the producer's futures must not
            # be cancelled under it (a late ack is harmless: the consumer dedups).
            if acks:
                done, _ = await asyncio.wait(acks)
                for ack in done:
                    ack.result()
    except TimeoutError:
        raise BrokerUnavailable(
            f"the broker did not acknowledge within {settings.produce_timeout_s}s"
        ) from None
    except KafkaError as error:
        raise BrokerUnavailable(f"the broker refused the write ({type(error).__name__})") from None
    STATUS_BACK_EVENTS.labels(target_id, "received").inc(len(events))
