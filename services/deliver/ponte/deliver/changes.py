"""Change events as the deliver service reads them, and which of them a target needs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from ponte.deliver.targets import Target
from ponte.shared.versions import version_key


@dataclass
class Change:
    entity: str
    source_id: str
    source_key: str
    row_id: int
    operation: str
    version_at: datetime | None
    version_event_id: str | None
    row: dict[str, Any]
    topic: str
    partition: int
    offset: int
    published_at: float | None = None
    """When the transform's outbox published it (the Kafka record's time, Unix seconds)."""
    version_seq: int | None = None
    """The version's sequence (``ponte.shared.versions.Version``); None in a change event
    published before it existed, which sorts before every sequence (``NO_SEQUENCE``)."""

    @property
    def external_id(self) -> str:
        """Ponte's id of the record in every CRM: stable across re-deliveries."""
        return f"{self.source_id}/{self.entity}/{self.source_key}"

    def version_key(self) -> tuple[float, int, str]:
        return version_key(self.version_at, self.version_seq, self.version_event_id)


def change_from(
    data: dict[str, Any], *, topic: str, partition: int, offset: int, published_at: float | None
) -> Change:
    """A change from its event body (``event_body``) and where it stood on its topic."""
    version = data.get("version") or {}
    at = version.get("at")
    return Change(
        entity=data["entity"],
        source_id=data["source_id"],
        source_key=data["source_key"],
        row_id=int(data["row_id"]),
        operation=data["operation"],
        version_at=datetime.fromisoformat(at) if at else None,
        version_event_id=version.get("event_id"),
        version_seq=_sequence(version.get("seq")),
        row=data.get("row") or {},
        topic=topic,
        partition=partition,
        offset=offset,
        published_at=published_at,
    )


def _sequence(value: Any) -> int | None:
    """A change event's ``version.seq``: absent or null before the sequence existed."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"version.seq must be an integer or null, not {type(value).__name__}")
    return value


def event_body(change: Change) -> dict[str, Any]:
    """The change as its event carries it (what the transform published), for the
    dead-letter topic and for changes kept while they wait (``references``)."""
    return {
        "entity": change.entity,
        "source_id": change.source_id,
        "source_key": change.source_key,
        "row_id": change.row_id,
        "operation": change.operation,
        "row": change.row,
        "version": {
            "at": change.version_at.isoformat() if change.version_at else None,
            "seq": change.version_seq,
            "event_id": change.version_event_id,
        },
    }


def parse_change(record: ConsumerRecord[bytes, bytes]) -> Change | None:
    """A change event, or None for a message that is not one (counted by the caller)."""
    try:
        return change_from(
            orjson.loads(record.value or b""),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            published_at=record.timestamp / 1000,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def latest_per_record(target: Target, changes: list[Change]) -> list[Change]:
    """The changes this target wants, only the newest of each record.

    Why order holds: change events are keyed by entity/source/key, so one record's changes
    sit in one partition in commit order and reach one consumer in that order. Within a
    batch only the newest version is sent (older ones are superseded); batches are
    delivered one after another, and a version older than the one already delivered is
    skipped, so the CRM never goes back in time, even on replay.
    """
    newest: dict[tuple[str, str, str], Change] = {}
    for change in changes:
        if not target.wants(change.source_id, change.entity):
            continue
        key = (change.entity, change.source_id, change.source_key)
        current = newest.get(key)
        if current is None or change.version_key() >= current.version_key():
            newest[key] = change
    return list(newest.values())


def properties_for(target: Target, change: Change) -> dict[str, Any]:
    """The target's properties from the row's columns (text for times and decimals)."""
    return target.objects[change.entity].values_for(change.row)
