"""HubSpot's webhook events, as the route receives them (a JSON array checked for the
fields Ponte keys on) and as the consumer reads them back from the status topic
(``CrmEvent``): one model for both halves, so that what the route lets in is what the
consumer can read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from ponte.shared.replay.items import REPLAYED_FROM

DEAL_STAGE = "dealstage"
DEALS_OBJECT_TYPE_ID = "0-3"


class InvalidBatch(ValueError):
    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field = field_name


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    """HubSpot's webhook body: a JSON array of events, each with the fields Ponte keys on."""
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidBatch("body is not JSON", "body") from None
    if not isinstance(events, list):
        raise InvalidBatch("body must be a JSON array of events", "body")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise InvalidBatch(f"[{index}] is not an object", f"[{index}]")
        for name in ("eventId", "objectId", "occurredAt"):
            value = event.get(name)
            if not isinstance(value, int | str) or isinstance(value, bool) or value == "":
                raise InvalidBatch(f"[{index}].{name} is missing", f"[{index}].{name}")
        if not str(event["occurredAt"]).isdigit():
            raise InvalidBatch(
                f"[{index}].occurredAt is not milliseconds since the epoch",
                f"[{index}].occurredAt",
            )
        if not isinstance(event.get("subscriptionType"), str):
            raise InvalidBatch(
                f"[{index}].subscriptionType is missing", f"[{index}].subscriptionType"
            )
    return events


@dataclass
class CrmEvent:
    """One HubSpot event as read back from the status topic."""

    target_id: str
    event_id: str
    crm_id: str
    subscription_type: str
    object_type_id: str | None
    property_name: str | None
    property_value: str | None
    occurred_at: datetime
    raw: dict[str, Any]
    topic: str
    partition: int
    offset: int
    replayed: bool = False
    """Put back by ``ponte replay`` (``REPLAYED_FROM``): a failed earlier try is retried."""

    def is_deal_stage_change(self) -> bool:
        deal = self.subscription_type == "deal.propertyChange" or (
            self.subscription_type == "object.propertyChange"
            and self.object_type_id == DEALS_OBJECT_TYPE_ID
        )
        return deal and self.property_name == DEAL_STAGE and self.property_value is not None


def parse_event(record: ConsumerRecord[bytes, bytes]) -> CrmEvent | None:
    """A status-topic message, or None for one that is not (counted by the caller)."""
    try:
        data = orjson.loads(record.value or b"")
        event = data["event"]
        value_of = event.get("propertyValue")
        return CrmEvent(
            target_id=str(data["target"]),
            event_id=str(event["eventId"]),
            crm_id=str(event["objectId"]),
            subscription_type=str(event["subscriptionType"]),
            object_type_id=event.get("objectTypeId"),
            property_name=event.get("propertyName"),
            property_value=None if value_of is None else str(value_of),
            occurred_at=datetime.fromtimestamp(int(event["occurredAt"]) / 1000, UTC),
            raw=event,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            replayed=any(name == REPLAYED_FROM for name, _ in record.headers or ()),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
