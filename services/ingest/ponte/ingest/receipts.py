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

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import asyncpg

from ponte.ingest.group_commit import GroupCommit

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
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS i(source_id, dedup_key, event_id)
), claimed AS (
    INSERT INTO ingest_receipts AS r (source_id, dedup_key, event_id, state, claimed_at)
    SELECT source_id, dedup_key, event_id, 'pending', $4 FROM input
    ON CONFLICT (source_id, dedup_key) DO UPDATE
        SET claimed_at = EXCLUDED.claimed_at
        WHERE r.state = 'pending' AND r.claimed_at < $5
    RETURNING r.source_id, r.dedup_key
)
SELECT i.source_id, i.dedup_key, c.dedup_key IS NOT NULL AS won, r.event_id, r.state
FROM input i
LEFT JOIN claimed c ON c.source_id = i.source_id AND c.dedup_key = i.dedup_key
LEFT JOIN ingest_receipts r ON r.source_id = i.source_id AND r.dedup_key = i.dedup_key
"""
# A stale pending claim (its owner crashed before the broker's ack) is taken over. A row
# another transaction inserted after this statement's snapshot is not visible to the final
# SELECT: it reads as "in flight", which asks the sender to retry: safe.

_ACCEPT = """
UPDATE ingest_receipts AS r SET state = 'accepted', accepted_at = $3
FROM unnest($1::text[], $2::text[]) AS i(source_id, dedup_key)
WHERE r.source_id = i.source_id AND r.dedup_key = i.dedup_key
"""

_RELEASE = """
DELETE FROM ingest_receipts AS r
USING unnest($1::text[], $2::text[]) AS i(source_id, dedup_key)
WHERE r.source_id = i.source_id AND r.dedup_key = i.dedup_key AND r.state = 'pending'
"""

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
Key = tuple[str, str]


class Receipts:
    """The ``ingest_receipts`` table, written by group commit with a short timeout: the hot
    path never waits long, and concurrent requests share round trips."""

    RECENT_MAX = 100_000
    """Deliveries this process accepted lately, answered "duplicate" without a query."""
    ACCEPT_LINGER_S = 0.05
    """How long an accepted mark waits for others to share its UPDATE."""

    def __init__(self, pool: asyncpg.Pool, *, pending_timeout_s: float, timeout_s: float = 1.0):
        self._pool = pool
        self._recent: OrderedDict[Key, str] = OrderedDict()
        self._marking: set[asyncio.Future[None]] = set()
        self._pending_timeout = timedelta(seconds=pending_timeout_s)
        self._timeout_s = timeout_s
        self._claims: GroupCommit[tuple[str, str, str], ClaimResult] = GroupCommit(self._claim)
        # Nobody waits for the accepted marks, so they linger to share round trips: at a
        # steady moderate rate requests rarely overlap, and each ack cost an UPDATE of
        # its own. This replica answers "duplicate" from memory meanwhile; another
        # replica seeing the claim still pending answers 409 and the sender retries, as
        # it would have before the mark.
        self._accepts: GroupCommit[Key, None] = GroupCommit(
            self._accept, linger_s=self.ACCEPT_LINGER_S
        )
        self._releases: GroupCommit[Key, None] = GroupCommit(self._release)

    async def claim(self, source_id: str, dedup_key: str, event_id: str) -> ClaimResult:
        known = self._recent.get((source_id, dedup_key))
        if known is not None:  # a sender retrying at this replica: no round trip needed
            return ClaimResult(Claim.DUPLICATE, known)
        try:
            return await self._claims.submit((source_id, dedup_key, event_id))
        except _DB_ERRORS as error:
            log.warning("dedup check unavailable", extra={"error": type(error).__name__})
            return ClaimResult(Claim.UNCHECKED, event_id)

    def accept(self, source_id: str, dedup_key: str, event_id: str) -> None:
        """Mark the delivery accepted after the broker's ack, without making the sender
        wait for it: this replica remembers it at once, and the database row follows by
        group commit. If the mark is lost (a crash, the database away), the claim stays
        ``pending``: a re-delivery within the pending timeout is asked to retry (409),
        after it the delivery is produced again and the transform drops the duplicate by
        event id. So this never raises."""
        self._recent[(source_id, dedup_key)] = event_id
        if len(self._recent) > self.RECENT_MAX:
            self._recent.popitem(last=False)
        # The group commit's future itself, not a task awaiting it: a task per webhook
        # was a measurable share of ingest's CPU.
        mark = self._accepts.submit_nowait((source_id, dedup_key))
        self._marking.add(mark)
        mark.add_done_callback(self._marked)

    def _marked(self, mark: asyncio.Future[None]) -> None:
        self._marking.discard(mark)
        if mark.cancelled():
            return
        error = mark.exception()
        if error is None:
            return
        if isinstance(error, _DB_ERRORS):
            log.warning("could not mark delivery accepted", extra={"error": type(error).__name__})
        else:
            log.error("marking delivery accepted failed", exc_info=error)

    async def flush(self) -> None:
        """Wait for the pending marks (at shutdown)."""
        if self._marking:
            await asyncio.gather(*self._marking, return_exceptions=True)

    async def release(self, source_id: str, dedup_key: str) -> None:
        """Give up a claim whose produce failed, so the sender's retry is accepted."""
        try:
            await self._releases.submit((source_id, dedup_key))
        except _DB_ERRORS as error:
            log.warning("could not release claim", extra={"error": type(error).__name__})

    async def _claim(self, items: list[tuple[str, str, str]]) -> list[ClaimResult]:
        # Two requests for one delivery in the same batch: the first one claims, the
        # others are "in flight" (one statement cannot claim a row twice).
        first: dict[Key, int] = {}
        for index, (source_id, dedup_key, _) in enumerate(items):
            first.setdefault((source_id, dedup_key), index)
        unique = [items[index] for index in first.values()]
        now = datetime.now(UTC)
        async with self._pool.acquire(timeout=self._timeout_s) as connection:
            rows = await connection.fetch(
                _CLAIM,
                [i[0] for i in unique],
                [i[1] for i in unique],
                [i[2] for i in unique],
                now,
                now - self._pending_timeout,
                timeout=self._timeout_s,
            )
        outcome = {(row["source_id"], row["dedup_key"]): row for row in rows}
        results = []
        for index, (source_id, dedup_key, event_id) in enumerate(items):
            row = outcome.get((source_id, dedup_key))
            if first[(source_id, dedup_key)] != index or row is None:
                results.append(ClaimResult(Claim.IN_FLIGHT, event_id))
            elif row["won"]:
                results.append(ClaimResult(Claim.NEW, event_id))
            elif row["state"] == "accepted":
                results.append(ClaimResult(Claim.DUPLICATE, row["event_id"]))
            else:
                results.append(ClaimResult(Claim.IN_FLIGHT, row["event_id"] or event_id))
        return results

    async def _accept(self, keys: list[Key]) -> list[None]:
        await self._execute(_ACCEPT, keys, datetime.now(UTC))
        return [None] * len(keys)

    async def _release(self, keys: list[Key]) -> list[None]:
        await self._execute(_RELEASE, keys)
        return [None] * len(keys)

    async def _execute(self, sql: str, keys: list[Key], *extra: object) -> None:
        async with self._pool.acquire(timeout=self._timeout_s) as connection:
            await connection.execute(
                sql, [k[0] for k in keys], [k[1] for k in keys], *extra, timeout=self._timeout_s
            )
