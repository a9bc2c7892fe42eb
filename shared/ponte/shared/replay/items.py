"""What a dead letter is to the operator (``Item``), and what goes back out (``Outgoing``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

Stage = Literal["transform", "deliver", "status"]
STAGES: tuple[Stage, ...] = get_args(Stage)
"""In the order data flows through them, which is the order of a listing."""

REPLAYED_FROM = "ponte-replayed-from"
"""Header on every replayed message: the dead letter's ``topic/partition/offset``. Status
back reads it to retry an event it recorded as failed (any other repeat is a duplicate)."""


@dataclass(frozen=True)
class Outgoing:
    """One message to produce: where, keyed how, with which bytes and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Item:
    """One dead letter as listed: who it is, why it failed, and whether it can go back."""

    stage: Stage
    source: str
    table: str
    """The entity (deliver, status) or the source's table (transform)."""
    key: str
    target: str
    event_id: str
    """The raw event (transform), the version's raw event (deliver), the CRM's event
    (status)."""
    reason: str
    failed_at: str
    dead_letter: str
    """Where the dead letter stands: ``topic/partition/offset``."""
    not_replayable: str | None = None
    """Why it cannot go back (None: it can)."""

    @property
    def failed_at_time(self) -> datetime | None:
        """``failed_at`` as an instant; None when it is missing or not ISO 8601."""
        try:
            moment = datetime.fromisoformat(self.failed_at)
        except ValueError:
            return None
        return moment if moment.tzinfo else None


@dataclass(frozen=True)
class HeaderNames:
    """Which headers of a stage's dead letters hold the listing's fields (each stage
    names them its own way; ``ponte-source`` and ``ponte-dlq-reason`` are common)."""

    table: str
    target: str | None
    event_id: str | None
    failed_at: str


DELIVERY_HEADERS = HeaderNames("ponte-entity", "ponte-target", None, "ponte-dlq-last-attempt")
"""Deliver's and status back's dead letters (``ponte.deliver``)."""
TRANSFORM_HEADERS = HeaderNames("ponte-table", None, "ponte-event-id", "ponte-failed-at")
"""The transform's dead letters (``BatchProcessor._dead_letter``)."""


def listed(
    stage: Stage, key: bytes, headers: dict[str, str], position: str, names: HeaderNames
) -> Item:
    """A dead letter's listing from its key and headers."""

    def header(name: str | None) -> str:
        return headers.get(name, "") if name else ""

    return Item(
        stage=stage,
        source=headers.get("ponte-source", ""),
        table=header(names.table),
        key=key.decode("utf-8", "replace"),
        target=header(names.target),
        event_id=header(names.event_id),
        reason=headers.get("ponte-dlq-reason", ""),
        failed_at=header(names.failed_at),
        dead_letter=position,
    )


@dataclass(frozen=True)
class Candidate:
    """A dead letter read: its listing, and the message that replays it (None when it
    cannot be replayed; ``item.not_replayable`` says why)."""

    item: Item
    outgoing: Outgoing | None
