"""Who a raw-topic message is, even when its value cannot be read.

A rejection or dead letter is only useful if someone can tell which source, which event
and which record it was, and get the bytes back. A decoded event says so itself. For a
value that is not a readable raw event (a limit the strict decoder refuses, bytes that
are not JSON, a producer other than ingest) the identity comes from what travels beside
it, in this order: the identity headers ingest's publisher writes
(``ponte.shared.events.HEADER_*``), the message key (``source/resource/record-key``),
and the raw event's leading top-level fields (ingest writes ``payload`` last, so the
identity precedes anything the sender wrote). Only when none of them has it does the
event id fall back to the message's topic/partition/offset.

The raw bytes themselves are kept as base64, cut at ``RAW_KEEP_BYTES`` with their size,
their digest and the topic/partition/offset that holds them whole (``raw_pointer``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ponte.shared.events import (
    HEADER_EVENT_ID,
    HEADER_KIND,
    HEADER_SOURCE,
    HEADER_TOPIC,
    RawEvent,
)
from ponte.shared.source_kinds import SourceKind, resource_of

UNKNOWN = "unknown"
"""The source id of a message nothing identifies (no header, no key, no readable field)."""

RAW_KEEP_BYTES = 64 * 1024
"""How much of an unreadable value a dead letter and a rejection row carry (as base64);
the rest stays on the raw topic at the offset they name, for its retention."""

_SCAN_BYTES = 4096
"""How far into an unreadable value the identity fields are looked for."""

_IDENTITY_MAX = 500
"""The longest identity value kept (event ids are ~40 characters; keys are bounded by the
edge). Longer is a message from elsewhere, cut so it cannot swell a header or a row."""

_FIELD = re.compile(
    rb'"(event_id|source_id|source_kind|topic|record_key)"\s*:\s*("(?:[^"\\]|\\.){0,2000}")'
)


class RawMessage(Protocol):
    """The parts of a Kafka record read here (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Identity:
    """What a rejection or dead letter names: never empty, always storable text."""

    event_id: str
    source_id: str
    table: str
    record_key: str
    source_kind: str = ""


def storable(text: str, limit: int = _IDENTITY_MAX) -> str:
    """Text PostgreSQL and a Kafka header can hold, without losing what it was: NUL and
    lone surrogates (both refused by PostgreSQL's text) written as escapes, and cut."""
    cleaned = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return cleaned[:limit]


def identity_of(message: RawMessage, event: RawEvent | None) -> Identity:
    """The event's own identity, or the best the message's headers, key and leading bytes
    give (see the module's docstring)."""
    if event is not None:
        return Identity(
            event.event_id,
            event.source_id,
            event.topic,
            event.record_key,
            event.source_kind.value,
        )
    found = _scanned(message.value or b"")
    found.update(_from_headers(message.headers or ()))
    key = (message.key or b"").decode("utf-8", "replace")
    source_id = found.get("source_id") or (key.split("/", 1)[0] if "/" in key else "")
    table = found.get("topic", "")
    record_key = found.get("record_key") or _record_key_from(key, source_id, table, found)
    event_id = found.get("event_id") or f"{message.topic}/{message.partition}/{message.offset}"
    return Identity(
        storable(event_id),
        storable(source_id) or UNKNOWN,
        storable(table),
        storable(record_key),
        storable(found.get("source_kind", "")),
    )


def raw_pointer(message: RawMessage) -> dict[str, Any]:
    """The unreadable value itself, as base64 (cut at ``RAW_KEEP_BYTES``), its size and
    digest, and where it stands whole."""
    value = message.value or b""
    return {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "bytes": len(value),
        "sha256": hashlib.sha256(value).hexdigest(),
        "truncated": len(value) > RAW_KEEP_BYTES,
        "base64": base64.b64encode(value[:RAW_KEEP_BYTES]).decode("ascii"),
    }


def _from_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    names = {
        HEADER_EVENT_ID: "event_id",
        HEADER_SOURCE: "source_id",
        HEADER_KIND: "source_kind",
        HEADER_TOPIC: "topic",
    }
    found = {}
    for name, value in headers:
        if name in names and value:
            found[names[name]] = value.decode("utf-8", "replace")
    return found


def _scanned(value: bytes) -> dict[str, str]:
    """The first occurrence of each identity field in the value's leading bytes; a string
    that is not valid JSON text is skipped."""
    found: dict[str, str] = {}
    for match in _FIELD.finditer(value[:_SCAN_BYTES]):
        name = match.group(1).decode()
        if name in found:
            continue
        try:
            text = json.loads(match.group(2))
        except ValueError:
            continue
        if isinstance(text, str) and text:
            found[name] = text
    return found


def _record_key_from(key: str, source_id: str, table: str, found: dict[str, str]) -> str:
    """The record key out of ``source/resource/record-key``: exact when the table and kind
    are known (a resource may hold a ``/``), else everything after the second ``/``."""
    resource = table
    try:
        if table and found.get("source_kind"):
            resource = resource_of(SourceKind(found["source_kind"]), table)
    except ValueError:
        resource = table
    prefix = f"{source_id}/{resource}/"
    if resource and key.startswith(prefix):
        return key[len(prefix) :]
    parts = key.split("/", 2)
    return parts[2] if len(parts) == 3 else key
