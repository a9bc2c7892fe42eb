"""Group commit: many concurrent requests share one database round trip.

Each webhook needs a dedup claim before it is produced and a mark after. Done one by one,
those two statements cost more CPU than the rest of the request. ``GroupCommit`` queues
the items of concurrent requests and runs them as one statement (``unnest`` of arrays):
one flush at a time; what arrives while a flush is in flight goes in the next one. Under
load that batches many requests per round trip; alone, a request waits for one round trip
as before.

``linger_s`` is for work nobody waits on (marking a delivery accepted): each flush first
waits that long, so at a steady, moderate rate, where requests rarely overlap, many of
them still share a round trip instead of paying one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        flush: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_batch: int = 500,
        linger_s: float = 0.0,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        return await self.submit_nowait(item)

    def submit_nowait(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item`` and return the future of its result, for a caller that does not
        wait for it (no task of its own per item)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        while self._pending:
            if self._linger_s > 0:
                await asyncio.sleep(self._linger_s)
            batch, self._pending = (
                self._pending[: self._max_batch],
                self._pending[self._max_batch :],
            )
            try:
                results = await self._flush([item for item, _ in batch])
            except Exception as error:  # every waiter learns of the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
