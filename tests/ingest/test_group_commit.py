"""Group commit (pure asyncio, no database)."""

from __future__ import annotations

import asyncio

import pytest

from ponte.ingest.group_commit import GroupCommit


async def test_concurrent_items_share_flushes_and_get_their_own_results() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0.01)
        return [item * 10 for item in items]

    group = GroupCommit(flush, max_batch=30)
    results = await asyncio.gather(*(group.submit(n) for n in range(100)))
    assert results == [n * 10 for n in range(100)]
    assert len(flushes) < 10 and max(len(f) for f in flushes) <= 30


async def test_a_failed_flush_fails_its_waiters_only() -> None:
    async def flush(items: list[int]) -> list[int]:
        if 3 in items:
            raise OSError("database went away")
        return items

    group = GroupCommit(flush)
    with pytest.raises(OSError):
        await group.submit(3)
    assert await group.submit(4) == 4
