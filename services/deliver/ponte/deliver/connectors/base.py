"""What every CRM connector offers, and how it reports failure.

Connectors raise ``RetryableError`` for what may work later (429, 5xx, timeouts, a
connection refused) and ``TerminalError`` for what will not (any other 4xx: retrying a
validation error forever is how today's integrations clog). Per-record failures inside a
batch (HubSpot's 207) are returned, not raised, so the records that worked are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import Target


@dataclass
class Outgoing:
    """One record to write: Ponte's external id, the target's properties, and the CRM's
    own id when an earlier delivery stored it (so a CRM without upsert-by-external-id is
    updated in place rather than searched again)."""

    external_id: str
    properties: dict[str, Any]
    crm_id: str | None = None


@dataclass
class BatchOutcome:
    delivered: dict[str, str] = field(default_factory=dict)
    """external id -> the CRM's own id."""
    failed: dict[str, str] = field(default_factory=dict)
    """external id -> why the CRM refused that record."""


class DeliveryError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        excerpt: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.excerpt = excerpt[:500]
        self.retry_after = retry_after


class RetryableError(DeliveryError):
    """May work later: 429, 5xx, timeout, connection error."""


class TerminalError(DeliveryError):
    """Will not work as sent: any other 4xx."""


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
