"""``eventually``, the suite's one way to wait: it must fail when the condition never holds
(else every test built on it could not fail either), and fail at once, with the real
cause, when the background task it waits on has died."""

from __future__ import annotations

import asyncio

import pytest

from tests.eventually import eventually


async def test_returns_the_first_value_that_satisfies() -> None:
    seen = iter([0, 1, 2, 3])
    assert await eventually(lambda: next(seen), timeout_s=1, interval_s=0, message="2") == 1
    counts = iter([1, 2, 3])

    async def count() -> int:
        return next(counts)

    found = await eventually(
        count, satisfied=lambda n: n >= 3, timeout_s=1, interval_s=0, message="3"
    )
    assert found == 3


async def test_fails_at_the_deadline_naming_what_and_the_last_value() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AssertionError, match=r"after 0.2 s waiting for 3 rows; last observed: 2"):
        await eventually(lambda: 2, satisfied=lambda n: n == 3, timeout_s=0.2, message="3 rows")
    assert 0.2 <= loop.time() - started < 1.0


async def test_a_dead_task_fails_the_wait_at_once_with_its_exception() -> None:
    async def consumer() -> None:
        raise RuntimeError("consumer crashed")

    task = asyncio.create_task(consumer())
    with pytest.raises(RuntimeError, match="consumer crashed"):
        await eventually(lambda: False, timeout_s=30, task=task, message="rows")
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    with pytest.raises(AssertionError, match="stopped while waiting for rows"):
        await eventually(lambda: False, timeout_s=30, task=finished, message="rows")


async def test_an_assertion_inside_the_condition_is_not_retried() -> None:
    calls = 0

    def condition() -> bool:
        nonlocal calls
        calls += 1
        raise AssertionError("the service exited")

    with pytest.raises(AssertionError, match="the service exited"):
        await eventually(condition, timeout_s=30, message="ready")
    assert calls == 1


async def test_a_huge_last_value_is_shown_cut() -> None:
    with pytest.raises(AssertionError, match=r"last observed: 'xxx.*\.\.\. \(10002 chars\)$"):
        await eventually(lambda: "x" * 10_000, satisfied=lambda _: False, timeout_s=0, message="x")
