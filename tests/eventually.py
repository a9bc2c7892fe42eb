"""Waiting in a test for something that happens in the background (a consumer, a
subprocess, a server starting, a writer's flush): ``eventually`` polls a condition until
it holds, where a sleep would guess how long that takes.

A guessed sleep is too short on a loaded machine (a flaky failure) or too long everywhere
else (a slow suite); a poll returns as soon as the condition holds, and at its deadline
fails naming what it waited for and what it saw last. Given the background task that
makes the condition come true, it fails at once with that task's own exception when the
task stops: waiting out the deadline for a consumer that died would only hide why."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")
SHOWN = 500
"""How much of the last observed value's repr a failure shows (a row set can be huge)."""


@overload
async def eventually(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout_s: float,
    interval_s: float = ...,
    message: str,
    satisfied: Callable[[T], object] = ...,
    task: asyncio.Task[Any] | None = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T],
    *,
    timeout_s: float,
    interval_s: float = ...,
    message: str,
    satisfied: Callable[[T], object] = ...,
    task: asyncio.Task[Any] | None = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], Any],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    message: str,
    satisfied: Callable[[Any], object] = bool,
    task: asyncio.Task[Any] | None = None,
) -> Any:
    """Call ``condition`` (sync or async) every ``interval_s`` until ``satisfied`` holds
    for what it returns (by default: until it returns something truthy); return that.

    ``message`` names what is awaited: at the deadline the failure reads "timed out after
    20 s waiting for <message>; last observed: <value>". An exception from ``condition``
    is not retried, so an assertion inside it (a subprocess that exited) fails at once.
    ``task``: the background task the condition depends on; if it stops first, its
    exception is raised (an AssertionError if it ended without one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        observed = condition()
        if inspect.isawaitable(observed):
            observed = await observed
        if satisfied(observed):
            return observed
        if task is not None and task.done():
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
            raise AssertionError(f"{task.get_name()} stopped while waiting for {message}")
        if loop.time() >= deadline:
            shown = repr(observed)
            shown = shown if len(shown) <= SHOWN else f"{shown[:SHOWN]}... ({len(shown)} chars)"
            raise AssertionError(
                f"timed out after {timeout_s:g} s waiting for {message}; last observed: {shown}"
            )
        await asyncio.sleep(interval_s)
