"""Delivery claims in ``ingest_receipts`` (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ponte.ingest.receipts import Claim, Receipts

pytestmark = pytest.mark.integration


async def test_claim_lifecycle(pool: asyncpg.Pool) -> None:
    receipts = Receipts(pool, pending_timeout_s=30)
    key = f"delivery-{uuid.uuid4().hex}"

    assert (await receipts.claim("rc", key, "evt_1")).claim is Claim.NEW
    assert (await receipts.claim("rc", key, "evt_1")).claim is Claim.IN_FLIGHT
    receipts.accept("rc", key, "evt_1")
    duplicate = await receipts.claim("rc", key, "evt_other")  # from this replica's memory
    assert duplicate.claim is Claim.DUPLICATE and duplicate.event_id == "evt_1"
    await receipts.flush()
    # Another replica (no memory of it) learns it from the database.
    other = Receipts(pool, pending_timeout_s=30)
    from_database = await other.claim("rc", key, "evt_other")
    assert from_database.claim is Claim.DUPLICATE and from_database.event_id == "evt_1"
    await other.release("rc", key)  # releasing an accepted delivery changes nothing
    assert (await other.claim("rc", key, "evt_1")).claim is Claim.DUPLICATE


async def test_released_claim_can_be_retried(pool: asyncpg.Pool) -> None:
    receipts = Receipts(pool, pending_timeout_s=30)
    key = f"delivery-{uuid.uuid4().hex}"
    assert (await receipts.claim("rc", key, "evt_2")).claim is Claim.NEW
    await receipts.release("rc", key)
    assert (await receipts.claim("rc", key, "evt_2")).claim is Claim.NEW


async def test_stale_pending_claim_is_taken_over(pool: asyncpg.Pool) -> None:
    """A claim whose owner died before the broker's ack must not block the retry forever."""
    receipts = Receipts(pool, pending_timeout_s=30)
    key = f"delivery-{uuid.uuid4().hex}"
    assert (await receipts.claim("rc", key, "evt_3")).claim is Claim.NEW
    await pool.execute(
        "UPDATE ingest_receipts SET claimed_at = $3 WHERE source_id = $1 AND dedup_key = $2",
        "rc",
        key,
        datetime.now(UTC) - timedelta(seconds=31),
    )
    assert (await receipts.claim("rc", key, "evt_3")).claim is Claim.NEW


async def test_database_down_means_unchecked_not_refused() -> None:
    pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:9/none", min_size=0)
    try:
        result = await Receipts(pool, pending_timeout_s=30, timeout_s=0.5).claim("rc", "k", "e")
    finally:
        await pool.close()
    assert result.claim is Claim.UNCHECKED


async def test_concurrent_claims_share_round_trips_and_one_wins(pool: asyncpg.Pool) -> None:
    receipts = Receipts(pool, pending_timeout_s=30)
    keys = [f"delivery-{uuid.uuid4().hex}" for _ in range(50)]
    same = f"delivery-{uuid.uuid4().hex}"
    results = await asyncio.gather(
        *(receipts.claim("rc", key, f"evt_{n}") for n, key in enumerate(keys)),
        *(receipts.claim("rc", same, "evt_same") for _ in range(5)),
    )
    assert [r.claim for r in results[:50]] == [Claim.NEW] * 50
    same_claims = sorted(r.claim for r in results[50:])
    assert same_claims == sorted([Claim.NEW] + [Claim.IN_FLIGHT] * 4)
