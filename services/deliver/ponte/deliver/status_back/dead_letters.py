"""Failed status updates to the dead-letter topic, with the deliver engine's headers, so
that the same tools read both topics and an operator can replay either."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from ponte.deliver.status_back.outcomes import Outcome


def dead_letter_headers(outcome: Outcome) -> dict[str, str]:
    """The deliver engine's dead-letter headers, filled from one failed event."""
    event = outcome.event
    now = datetime.now(UTC)
    return {
        "ponte-target": event.target_id,
        "ponte-dlq-reason": (outcome.reason or "")[:500],
        "ponte-dlq-status": str(outcome.http_status or ""),
        "ponte-dlq-response": outcome.excerpt[:500],
        "ponte-dlq-attempts": str(outcome.attempts),
        "ponte-dlq-first-attempt": (outcome.first_attempt or now).isoformat(),
        "ponte-dlq-last-attempt": (outcome.last_attempt or now).isoformat(),
        "ponte-original-topic": event.topic,
        "ponte-original-partition": str(event.partition),
        "ponte-original-offset": str(event.offset),
        "ponte-entity": outcome.entity or "",
        "ponte-source": outcome.source_id or "",
    }


def dead_letter_value(outcome: Outcome) -> bytes:
    """The HubSpot event and the origin call it would have made."""
    return orjson.dumps(
        {
            "target": outcome.event.target_id,
            "event": outcome.event.raw,
            "origin": {
                "source": outcome.source_id,
                "kind": outcome.origin_kind,
                "entity": outcome.entity,
                "source_key": outcome.source_key,
                "status": outcome.origin_status,
            },
        }
    )


async def send_dead_letter(producer: AIOKafkaProducer, topic: str, outcome: Outcome) -> None:
    """The failed update to the dead-letter topic, acknowledged before offsets move."""
    headers = dead_letter_headers(outcome)
    ack = await producer.send(
        topic,
        value=dead_letter_value(outcome),
        key=f"{outcome.source_id}/{outcome.entity}/{outcome.source_key}".encode(),
        headers=[(k, v.encode()) for k, v in headers.items()],
    )
    await ack
