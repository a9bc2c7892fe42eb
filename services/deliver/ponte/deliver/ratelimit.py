"""Flow control per target: a token bucket that follows the documented limit and adapts
to what the API says in its responses.

HubSpot documents 100 (or 190) requests per 10 s per app and answers each call with
``X-HubSpot-RateLimit-Remaining`` / ``-Interval-Milliseconds``; a 429 carries
``Retry-After`` (or we fall back to the interval). The bucket starts full, refills at
``requests / per_seconds``, never lets more than ``requests`` through in any window, and
when the server reports fewer remaining calls than the bucket holds, it believes the
server (another client may share the app's quota).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping


class TokenBucket:
    def __init__(
        self, capacity: int, per_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.rate = capacity / per_seconds
        self._clock = clock
        self._tokens = float(capacity)
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def delay(self) -> float:
        """Seconds until a token is available (0: now)."""
        self._refill()
        pause = max(0.0, self._paused_until - self._clock())
        if self._tokens >= 1:
            return pause
        return max(pause, (1 - self._tokens) / self.rate)

    async def acquire(self) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            while (wait := self.delay()) > 0:  # noqa: ASYNC110 - the wait is computed
                await asyncio.sleep(wait)
            self._tokens -= 1

    def pause(self, seconds: float) -> None:
        """The server said wait (429 Retry-After): nobody calls before then."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._tokens = 0.0
        self._updated = self._clock()

    def observe(self, headers: Mapping[str, str]) -> None:
        """Believe the server's count of remaining calls when it is lower than ours."""
        remaining = headers.get("x-hubspot-ratelimit-remaining")
        if remaining is not None and remaining.isdigit():
            self._refill()
            self._tokens = min(self._tokens, float(remaining))
