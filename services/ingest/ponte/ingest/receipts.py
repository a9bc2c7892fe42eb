"""Deduplication of re-sent deliveries, at the door.

Where deduplication lives, and why in both places:
- **Ingest** (here) recognises a re-delivery (same source event id / Shopify webhook id /
  WooCommerce delivery id) and answers ``"duplicate": true`` without writing a second event,
  so senders that retry aggressively do not multiply the work, and the sender is told.
  It claims the delivery in ``ingest_receipts`` *before* producing and marks it accepted
  after the broker's ack, so two replicas cannot both accept one delivery.
- **Transform** is still the authority for *effects*: it drops record events whose
  (event id, version) it has already applied. That covers what a door check cannot:
  a produce that timed out here but reached the broker, a claim left ``pending`` by a crash,
  or PostgreSQL being unreachable here (we then accept without the check rather than refuse
  an event Kafka can take durably; ``ponte_ingest_dedup_unavailable_total`` counts these).
Ingest event ids are deterministic (``delivery_id_for``), so every one of those paths
produces the same ids and the transform recognises them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import asyncpg

log = logging.getLogger(__name__)


class Claim(StrEnum):
    NEW = "new"
    """This request owns the delivery: produce it."""
    DUPLICATE = "duplicate"
    """Already accepted: answer duplicate."""
    IN_FLIGHT = "in_flight"
    """Another request is producing it right now: ask the sender to retry shortly."""
    UNCHECKED = "unchecked"
    """PostgreSQL did not answer: produce, and let the transform drop a duplicate."""


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    event_id: str


_CLAIM = """
INSERT INTO ingest_receipts AS r (source_id, dedup_key, event_id, state, claimed_at)
VALUES ($1, $2, $3, 'pending', $4)
ON CONFLICT (source_id, dedup_key) DO UPDATE
    SET claimed_at = EXCLUDED.claimed_at
    WHERE r.state = 'pending' AND r.claimed_at < $5
RETURNING true
"""


class Receipts:
    """The ``ingest_receipts`` table, with a short timeout: the hot path never waits long."""

    def __init__(self, pool: asyncpg.Pool, *, pending_timeout_s: float, timeout_s: float = 1.0):
        self._pool = pool
        self._pending_timeout = timedelta(seconds=pending_timeout_s)
        self._timeout_s = timeout_s

    async def claim(self, source_id: str, dedup_key: str, event_id: str) -> ClaimResult:
        now = datetime.now(UTC)
        try:
            async with self._pool.acquire(timeout=self._timeout_s) as connection:
                # A stale pending claim (its owner crashed before the ack) is taken over.
                won = await connection.fetchval(
                    _CLAIM,
                    source_id,
                    dedup_key,
                    event_id,
                    now,
                    now - self._pending_timeout,
                    timeout=self._timeout_s,
                )
                if won:
                    return ClaimResult(Claim.NEW, event_id)
                row = await connection.fetchrow(
                    "SELECT event_id, state FROM ingest_receipts "
                    "WHERE source_id = $1 AND dedup_key = $2",
                    source_id,
                    dedup_key,
                    timeout=self._timeout_s,
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("dedup check unavailable", extra={"error": type(error).__name__})
            return ClaimResult(Claim.UNCHECKED, event_id)
        if row is None:  # deleted between the two statements by retention: treat as new
            return ClaimResult(Claim.UNCHECKED, event_id)
        state = Claim.DUPLICATE if row["state"] == "accepted" else Claim.IN_FLIGHT
        return ClaimResult(state, row["event_id"])

    async def accept(self, source_id: str, dedup_key: str) -> None:
        """Mark the delivery accepted after the broker's ack. A failure here only means a
        later re-delivery is produced again (after the pending timeout) and dropped by the
        transform, so it is logged, not raised."""
        try:
            await self._pool.execute(
                "UPDATE ingest_receipts SET state = 'accepted', accepted_at = $3 "
                "WHERE source_id = $1 AND dedup_key = $2",
                source_id,
                dedup_key,
                datetime.now(UTC),
                timeout=self._timeout_s,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("could not mark delivery accepted", extra={"error": type(error).__name__})

    async def release(self, source_id: str, dedup_key: str) -> None:
        """Give up a claim whose produce failed, so the sender's retry is accepted."""
        try:
            await self._pool.execute(
                "DELETE FROM ingest_receipts WHERE source_id = $1 AND dedup_key = $2 "
                "AND state = 'pending'",
                source_id,
                dedup_key,
                timeout=self._timeout_s,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("could not release claim", extra={"error": type(error).__name__})
