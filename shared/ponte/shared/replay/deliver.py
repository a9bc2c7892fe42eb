"""The deliver engine's dead letters (``ponte.deliver.engine``'s ``_dead_letter``): the
change goes back onto the changes topic, keyed as the transform keys it, so that one
record's changes keep their partition. Every target reads it again; a target that has
that version (or a newer one) skips it, so a replay never writes twice."""

from __future__ import annotations

from dataclasses import replace
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

_NAMES = ("entity", "source_id", "source_key")


def candidate(letter: DeadLetter, settings: Settings) -> Candidate:
    """The dead letter's listing and, when it holds a change, that change re-published."""
    item = listed("deliver", letter.key, letter.headers, letter.position, DELIVERY_HEADERS)
    change = _change(letter.value)
    if isinstance(change, str):
        return Candidate(replace(item, not_replayable=change), None)
    version = change.get("version")
    event_id = version.get("event_id") if isinstance(version, dict) else None
    change.setdefault("changed", [])
    outgoing = Outgoing(
        settings.changes_topic,
        "/".join(str(change[name]) for name in _NAMES).encode(),
        orjson.dumps(change),
        (
            ("ponte-entity", str(change["entity"]).encode()),
            ("ponte-source", str(change["source_id"]).encode()),
            ("ponte-operation", str(change.get("operation", "")).encode()),
            (REPLAYED_FROM, letter.position.encode()),
        ),
    )
    return Candidate(replace(item, event_id=str(event_id or "")), outgoing)


def _change(value: bytes) -> dict[str, Any] | str:
    """The change event inside the dead letter, or why there is none."""
    try:
        letter = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "the dead letter is not JSON"
    change = letter.get("change") if isinstance(letter, dict) else None
    if not isinstance(change, dict):
        return "the dead letter holds no change object"
    for name in _NAMES:
        if not isinstance(change.get(name), str) or not change[name]:
            return f"change.{name} is missing"
    return change
