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
class Candidate:
    """A dead letter read: its listing, and the message that replays it (None when it
    cannot be replayed; ``item.not_replayable`` says why)."""

    item: Item
    outgoing: Outgoing | None
