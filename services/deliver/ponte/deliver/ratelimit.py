"""Flow control per target: at most N call starts in any rolling interval, as HubSpot
counts them, adapting to what the API says in its responses.

HubSpot documents 100 (or 190) requests per 10 s per app as a *rolling* window
(``TEN_SECONDLY_ROLLING``): a call is refused when N calls already arrived in the last
interval. A token bucket does not honour that: it starts full (N) and refills at N per
interval, so in its first interval it lets up to 2N calls through, and the server answers
the second half with 429s. So this limiter keeps a log of the times calls started and lets
a call start only while fewer than N starts lie within the last ``per_seconds +
margin_s``. Full rate is still N per interval (plus the margin), and idle time never turns
into a burst larger than N.

The margin covers what the client cannot see: the server stamps a call when it arrives,
not when we start it, so calls that took different times to arrive can sit closer
together at the server than they left us. 2% of the interval by default (200 ms of
HubSpot's 10 s) costs 2% of the ceiling.

What the server says wins when it is more cautious than the log (the app's quota may be
shared with another client):

- ``X-HubSpot-RateLimit-Remaining`` lower than the room the log sees: the difference is
  logged as starts made now (we cannot know when those other calls were made, so we
  assume the latest time, which frees their room last); a refusal's count (it comes
  with ``Retry-After``) is left to ``pause``, which knows when the room comes back;
- a 429's ``Retry-After`` (``pause``): nobody starts before then, and the window counts as
  full, with its room coming back one call per ``per_seconds / N`` from then on, so the
  calls resume at the documented pace rather than in a burst into a full window.

The class keeps the name ``TokenBucket`` (``RollingWindowLimiter`` is the same class)
because every connector takes one by that name.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable, Mapping

DEFAULT_MARGIN_FRACTION = 0.02
"""Default safety margin, as a share of the interval, added to the window (see above)."""
TICK_S = 1e-6
"""A start counts while ``now - start <= window`` (HubSpot's stand-in counts the call made
exactly one interval ago too), so a waiter sleeps this much past the boundary."""


class RollingWindowLimiter:
    """At most ``capacity`` call starts in any ``per_seconds`` (+ ``margin_s``) window."""

    def __init__(
        self,
        capacity: int,
        per_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        margin_s: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if per_seconds <= 0:
            raise ValueError(f"per_seconds must be positive, not {per_seconds}")
        margin = DEFAULT_MARGIN_FRACTION * per_seconds if margin_s is None else margin_s
        if margin < 0:
            raise ValueError(f"margin_s must not be negative, not {margin_s}")
        self.capacity = capacity
        self.per_seconds = per_seconds
        self.window = per_seconds + margin
        """Seconds a start counts against the capacity."""
        self._clock = clock
        self._sleep = sleep
        self._starts: list[float] = []
        """Start times still in the window, sorted; may hold assumed (others') calls,
        some of them in the future after a pause."""
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _prune(self, now: float) -> None:
        """Forget starts that left the window (a start counts while ``now - t <= window``)."""
        expired = bisect.bisect_left(self._starts, now - self.window)
        if expired:
            del self._starts[:expired]

    def room(self) -> int:
        """How many calls could start now, ignoring a pause."""
        self._prune(self._clock())
        return max(0, self.capacity - len(self._starts))

    def delay(self) -> float:
        """Seconds until a call may start (0: now)."""
        now = self._clock()
        self._prune(now)
        wait = max(0.0, self._paused_until - now)
        if len(self._starts) < self.capacity:
            return wait
        # The start that must leave the window before one more fits.
        blocking = self._starts[len(self._starts) - self.capacity]
        return max(wait, blocking + self.window - now + TICK_S)

    async def acquire(self) -> None:
        """Wait until a call may start, and log its start."""
        async with self._lock:  # one waiter at a time keeps the order fair
            while (wait := self.delay()) > 0:
                await self._sleep(wait)
            bisect.insort(self._starts, self._clock())

    def pause(self, seconds: float) -> None:
        """The server said wait (429 Retry-After): nobody starts before then, and the
        window counts as full, its room returning one call per ``per_seconds / N``."""
        now = self._clock()
        until = max(self._paused_until, now + seconds)
        self._paused_until = until
        self._prune(now)
        step = self.per_seconds / self.capacity
        for index in range(self.capacity - len(self._starts)):
            # This assumed start leaves the window ``index`` steps after the pause ends.
            bisect.insort(self._starts, until - self.window + index * step)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Believe the server's count of remaining calls when it is lower than ours."""
        remaining = headers.get("x-hubspot-ratelimit-remaining")
        if remaining is None or not remaining.strip().isdigit():
            return
        if "retry-after" in headers:  # a refusal: ``pause`` says when the room comes back
            return
        now = self._clock()
        self._prune(now)
        unseen = self.capacity - len(self._starts) - int(remaining)
        for _ in range(unseen):  # calls we did not make: assume they were made just now
            bisect.insort(self._starts, now)


TokenBucket = RollingWindowLimiter
"""The name the connectors and ``build_connectors`` use."""
