"""Group commit (pure asyncio, no database)."""

from __future__ import annotations

import asyncio

import pytest

from ponte.ingest.group_commit import GroupCommit


async def test_concurrent_items_share_flushes_and_get_their_own_results() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0.01)  # the scenario: a slow flush, so items queue behind it
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


async def test_lingering_flush_gathers_items_that_arrive_one_by_one() -> None:
    """Items submitted apart from each other (no overlap, as at a steady moderate rate)
    still share a flush when the group lingers; without linger each pays its own."""
    for linger_s, expected_flushes in ((0.05, 1), (0.0, 5)):
        flushes: list[list[int]] = []

        async def flush(items: list[int], flushes: list[list[int]] = flushes) -> list[int]:
            flushes.append(items)
            return items

        group = GroupCommit(flush, linger_s=linger_s)
        marks = []
        for n in range(5):
            marks.append(group.submit_nowait(n))
            # The scenario: arrivals 2 ms apart (unlingered, each flush is done by then).
            await asyncio.sleep(0.002)
        assert await asyncio.gather(*marks) == list(range(5))
        assert len(flushes) == expected_flushes
        assert sorted(item for batch in flushes for item in batch) == list(range(5))
