"""What every CRM connector offers, and how it reports failure.

Connectors raise ``RetryableError`` for what may work later (429, 5xx, timeouts, a
connection refused) and ``TerminalError`` for what will not (any other 4xx: retrying a
validation error forever is how today's integrations clog). Per-record failures inside a
batch (HubSpot's 207) are returned, not raised, so the records that worked are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import Target
from ponte.shared.http_policy import TerminalError


@dataclass
class Outgoing:
    """One record to write: Ponte's external id, the target's properties, and the CRM's
    own id when an earlier delivery stored it (so a CRM without upsert-by-external-id is
    updated in place rather than searched again)."""

    external_id: str
    properties: dict[str, Any]
    crm_id: str | None = None
    crm_key: str | None = None
    """The natural-key value last delivered for this record (``deliveries.crm_key``)."""


@dataclass
class BatchOutcome:
    delivered: dict[str, str] = field(default_factory=dict)
    """external id -> the CRM's own id."""
    failed: dict[str, str] = field(default_factory=dict)
    """external id -> why the CRM refused that record."""
    keys: dict[str, str] = field(default_factory=dict)
    """external id -> the natural-key value written, for connectors that find records by
    one (kept as ``deliveries.crm_key`` for ``check_same_record``)."""


class PairsRefused(TerminalError):
    """The CRM linked some pairs of a call and refused these (HubSpot's 207)."""

    def __init__(self, refused: dict[tuple[str, str], str], *, status: int, excerpt: str) -> None:
        super().__init__(f"{len(refused)} pair(s) refused", status=status, excerpt=excerpt)
        self.refused = refused
        """(from CRM id, to CRM id) -> why."""


class RecordMismatch(TerminalError):
    """The CRM record an update would overwrite has another natural key: not this record."""


KeyMatch = Literal["exact", "casefold", "digits"]
"""How two natural-key values are compared: as they are; case-folded and trimmed (an
e-mail); by their digits only (a CNPJ written with or without punctuation)."""


def normalise_key(value: Any, match: KeyMatch) -> str | None:
    """The comparable form of a natural-key value; None for a missing or empty one."""
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value)
    if match == "casefold":
        text = text.strip().casefold()
    elif match == "digits":
        text = "".join(ch for ch in text if ch.isdigit())
    return text or None


def same_key(found: Any, wanted: str, match: KeyMatch) -> bool:
    """Whether a CRM record's value (a scalar, or a list of them, or of ``{"value": ..}``
    as some CRMs hold e-mails and phones) is exactly the natural key, after ``match``."""
    target = normalise_key(wanted, match)
    if target is None:
        return False
    values = found if isinstance(found, list) else [found]
    for value in values:
        if isinstance(value, dict):
            value = value.get("value")
        if normalise_key(value, match) == target:
            return True
    return False


def check_same_record(
    *,
    what: str,
    key_name: str,
    found: Any,
    key: str,
    last_delivered: str | None,
    match: KeyMatch,
) -> None:
    """Before an update by a stored CRM id: the CRM's record must still carry this
    record's natural key (the change's own, or the one last delivered, so a key that
    really changed in the source still goes through). An empty value there proves
    nothing either way and passes. Anything else is another record (merged in the CRM,
    an id reused, an earlier wrong match): refuse rather than overwrite it."""
    values = found if isinstance(found, list) else [found]
    present = [v.get("value") if isinstance(v, dict) else v for v in values]
    if all(normalise_key(value, match) is None for value in present):
        return
    if same_key(found, key, match) or (
        last_delivered is not None and same_key(found, last_delivered, match)
    ):
        return
    last = f", last delivered {last_delivered!r}" if last_delivered else ""
    raise RecordMismatch(
        f"{what} has {key_name} {found!r} but this change has {key!r}{last}: it is another "
        "record, so Ponte does not overwrite it. Check the record in the CRM (merged, or "
        "its id reused); once it is right, replay this dead letter"
    )


class Connector(Protocol):
    """One CRM's API as the engine uses it. Every method raises ``RetryableError`` or
    ``TerminalError``; per-record refusals in a batch go in ``BatchOutcome.failed``."""

    async def upsert_batch(self, object_type: str, records: list[Outgoing]) -> BatchOutcome:
        """Create or update each record by Ponte's external id (never a duplicate)."""
        ...

    async def delete_batch(self, object_type: str, crm_ids: list[str]) -> None:
        """Delete (or archive) records by the CRM's own ids."""
        ...

    async def associate(self, from_type: str, to_type: str, pairs: list[tuple[str, str]]) -> None:
        """Link records (CRM ids, from -> to) with the CRM's default association; a CRM
        that links by a field instead (Ploomes' ``ContactId``) does it in the upsert and
        says so by raising ``TerminalError`` here."""
        ...

    async def read_back(self, object_type: str, crm_id: str) -> dict[str, Any] | None:
        """The record as the CRM has it now (None: not there): for checks and support."""
        ...


@dataclass
class TargetKind:
    """A kind of target: its settings model and how to build its connector."""

    model: type[Target]
    build: Callable[[Any, httpx.AsyncClient, TokenBucket], Connector]
    """(the target, an HTTP client on its base URL, its token bucket) -> the connector."""
