"""Status back's dead letters (``ponte.deliver.status_back.dead_letters``): the CRM's event
goes back onto the status topic as the webhook route wrote it (keyed ``target/objectId``,
so one deal's events keep their partition and order), marked ``REPLAYED_FROM``.

Status back drops an event whose (target, eventId) it has recorded, except a replayed
one recorded as ``failed``: that one is handled again (the origin's stage map, the stale
check, the call). Once applied, replaying it again is a duplicate; an update applied
meanwhile from a newer stage change makes it stale, never older-over-newer.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from ponte.shared.replay.items import (
    DELIVERY_HEADERS,
    REPLAYED_FROM,
    Candidate,
    Outgoing,
    listed,
)
from ponte.shared.replay.letters import DeadLetter
from ponte.shared.settings import Settings


def candidate(letter: DeadLetter, settings: Settings, now: datetime) -> Candidate:
    """The dead letter's listing and, when it holds a CRM event, that event re-published
    (``now`` as its ``received_at``: one run's replays of one event are equal bytes)."""
    item = listed("status", letter.key, letter.headers, letter.position, DELIVERY_HEADERS)
    found = _event(letter.value)
    if isinstance(found, str):
        return Candidate(replace(item, not_replayable=found), None)
    target, event = found
    outgoing = Outgoing(
        settings.status_topic,
        f"{target}/{event['objectId']}".encode(),
        orjson.dumps({"target": target, "received_at": now.isoformat(), "event": event}),
        (
            ("ponte-target", target.encode()),
            ("ponte-crm-event-id", str(event["eventId"]).encode()),
            (REPLAYED_FROM, letter.position.encode()),
        ),
    )
    return Candidate(replace(item, target=target, event_id=str(event["eventId"])), outgoing)


def _event(value: bytes) -> tuple[str, dict[str, Any]] | str:
    """The target and the CRM event inside the dead letter, or why there are none."""
    try:
        letter = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "the dead letter is not JSON"
    if not isinstance(letter, dict) or not isinstance(letter.get("event"), dict):
        return "the dead letter holds no event object"
    target, event = letter.get("target"), letter["event"]
    if not isinstance(target, str) or not target:
        return "target is missing"
    for name in ("eventId", "objectId"):
        if not isinstance(event.get(name), int | str) or isinstance(event.get(name), bool):
            return f"event.{name} is missing"
    return target, event
