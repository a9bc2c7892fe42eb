"""The transform's dead letters (``ponte.transform.processor``'s ``_dead_letter``): the
original raw event goes back onto the raw topic, as ingest published it.

A dead letter's value holds the decoded raw event (``event``), or, for a value that was
not a readable raw event, only its identity and a pointer to its bytes (``raw``: base64,
cut at 64 KiB). Bytes that are whole and do read as a raw event (the transform drops the
event from a dead letter whose payload PostgreSQL refused) go back as they were; anything
else is listed as not replayable, with why.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any

import orjson
from pydantic import ValidationError

from ponte.shared.events import HEADER_EVENT_ID, HEADER_KIND, HEADER_SOURCE, HEADER_TOPIC, RawEvent
from ponte.shared.replay.items import (
    REPLAYED_FROM,
    TRANSFORM_HEADERS,
    Candidate,
    Outgoing,
    listed,
)
from ponte.shared.replay.letters import DeadLetter
from ponte.shared.settings import Settings
from ponte.shared.validation_errors import first_problem


def candidate(letter: DeadLetter, settings: Settings) -> Candidate:
    """The dead letter's listing and, when it holds a raw event, that event re-published."""
    item = listed("transform", letter.key, letter.headers, letter.position, TRANSFORM_HEADERS)
    event_or_why = _raw_event(letter.value)
    if isinstance(event_or_why, str):
        return Candidate(replace(item, not_replayable=event_or_why), None)
    event, value = event_or_why
    outgoing = Outgoing(
        settings.raw_topic,
        event.partition_key,
        value,
        (
            # The identity headers ingest's publisher writes (a contract with the
            # transform, ``ponte.shared.events.HEADER_*``), then where this came from.
            (HEADER_EVENT_ID, event.event_id.encode()),
            (HEADER_SOURCE, event.source_id.encode()),
            (HEADER_KIND, event.source_kind.value.encode()),
            (HEADER_TOPIC, event.topic.encode()),
            ("ponte-received-at", event.received_at.isoformat().encode()),
            ("content-type", b"application/json"),
            (REPLAYED_FROM, letter.position.encode()),
        ),
    )
    return Candidate(replace(item, event_id=event.event_id), outgoing)


def _raw_event(value: bytes) -> tuple[RawEvent, bytes] | str:
    """The raw event and the bytes to publish, or why there is none."""
    try:
        letter = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "the dead letter is not JSON"
    if not isinstance(letter, dict):
        return "the dead letter is not a JSON object"
    error = letter.get("error")
    if isinstance(error, dict) and error.get("code") == "reference_expired":
        # Not a failed event: a stored row whose reference waited too long.
        return (
            "a reference that expired waiting for its target (the row is stored, the "
            "column empty): send the target, then the row again"
        )
    if isinstance(letter.get("event"), dict):
        try:
            event = RawEvent.model_validate(letter["event"])
        except ValidationError as error:
            return _not_an_event("event", error)
        # model_dump_json is what ingest publishes (its encoder is byte-for-byte equal).
        return event, event.model_dump_json().encode()
    return _from_raw_bytes(letter.get("raw"))


def _from_raw_bytes(raw: Any) -> tuple[RawEvent, bytes] | str:
    """The original bytes, when the dead letter kept them whole and they are a raw event."""
    if not isinstance(raw, dict) or not isinstance(raw.get("base64"), str):
        return "the dead letter holds neither the event nor its bytes"
    where = f"{raw.get('topic')}/{raw.get('partition')}/{raw.get('offset')}"
    if raw.get("truncated"):
        return (
            f"never a readable event, and only the first bytes are kept: the whole "
            f"{raw.get('bytes')} bytes are at {where} while its retention lasts"
        )
    try:
        original = base64.b64decode(raw["base64"], validate=True)
    except (binascii.Error, ValueError):
        return "raw.base64 is not base64"
    try:
        return RawEvent.model_validate_json(original), original
    except ValidationError as error:
        return _not_an_event(f"the bytes from {where}", error)


def _not_an_event(what: str, error: ValidationError) -> str:
    path, reason = first_problem(error, default="value")
    return f"never a readable event: {what} is not a Ponte raw event ({path}: {reason})"
