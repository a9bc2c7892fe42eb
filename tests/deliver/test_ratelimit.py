"""The rolling-window limiter against HubSpot's rule, on a fake clock (no broker, no
sleeping): never more than N starts in any interval, the full rate sustained, a 429's
pause honoured, the server's remaining count believed."""

from __future__ import annotations

import itertools
import random

import pytest

from ponte.deliver.ratelimit import RollingWindowLimiter, TokenBucket


class FakeClock:
    """Time that moves only when the limiter sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiter(capacity: int = 100, per_seconds: float = 10.0, **kwargs: float) -> tuple[
    RollingWindowLimiter, FakeClock
]:  # fmt: skip
    clock = FakeClock()
    return RollingWindowLimiter(capacity, per_seconds, clock, sleep=clock.sleep, **kwargs), clock


async def starts(bucket: RollingWindowLimiter, clock: FakeClock, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        await bucket.acquire()
        times.append(clock.now)
    return times


def most_in_any_window(times: list[float], interval: float) -> int:
    """HubSpot's count: the most calls within any closed interval of that length."""
    ordered = sorted(times)
    most = first = 0
    for last, at in enumerate(ordered):
        while at - ordered[first] > interval:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_the_connectors_name_is_the_rolling_window() -> None:
    assert TokenBucket is RollingWindowLimiter


async def test_never_more_than_n_starts_in_any_interval_even_from_a_standing_start() -> None:
    bucket, clock = limiter(margin_s=0.0)
    times = await starts(bucket, clock, 1000)
    assert most_in_any_window(times, 10.0) == 100
    # The old token bucket let ~200 through in the first 10 s; the rolling window 100.
    assert sum(1 for t in times if t - times[0] <= 10.0) == 100


async def test_idle_gaps_never_turn_into_a_burst_above_n() -> None:
    bucket, clock = limiter(margin_s=0.0)
    rng = random.Random(5)
    times = []
    for _ in range(2000):
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.5, 3.0])  # work between calls
        await bucket.acquire()
        times.append(clock.now)
    assert most_in_any_window(times, 10.0) <= 100


async def test_arrivals_late_by_less_than_the_margin_stay_within_the_servers_limit() -> None:
    bucket, clock = limiter()  # default margin: 2% of 10 s
    rng = random.Random(7)
    arrivals = [t + rng.uniform(0, 0.19) for t in await starts(bucket, clock, 1500)]
    assert most_in_any_window(arrivals, 10.0) <= 100


async def test_without_a_margin_uneven_arrivals_would_break_the_servers_limit() -> None:
    # Why the margin exists: the same arrival jitter with none overruns the server.
    bucket, clock = limiter(margin_s=0.0)
    rng = random.Random(7)
    arrivals = [t + rng.uniform(0, 0.19) for t in await starts(bucket, clock, 1500)]
    assert most_in_any_window(arrivals, 10.0) > 100


async def test_the_full_rate_is_sustained() -> None:
    bucket, clock = limiter()
    times = await starts(bucket, clock, 1100)
    assert times[99] == times[0]  # the first N at once
    # N at once, then N more each time the first N leave the window: N per 10.2 s.
    rate = (len(times) - 100) / (times[-1] - times[0])
    assert rate == pytest.approx(100 / 10.2, rel=0.001)  # N per interval + margin
    assert rate >= 0.97 * 100 / 10.0


async def test_a_pause_is_honoured_and_calls_resume_at_the_documented_pace() -> None:
    bucket, clock = limiter(margin_s=0.0)
    await starts(bucket, clock, 10)
    paused_at = clock.now
    bucket.pause(4.0)
    after = await starts(bucket, clock, 20)
    assert after[0] == pytest.approx(paused_at + 4.0)
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert min(gaps) == pytest.approx(0.1)  # one per 10 s / 100, not a burst


async def test_a_429_waits_for_retry_after_not_for_a_whole_window() -> None:
    # The connector shows the limiter the 429's headers, then pauses it for Retry-After.
    bucket, clock = limiter()
    refused_at = clock.now
    bucket.observe({"x-hubspot-ratelimit-remaining": "0", "retry-after": "1.5"})
    bucket.pause(1.5)
    after = await starts(bucket, clock, 3)
    assert after[0] == pytest.approx(refused_at + 1.5)
    assert after[2] - after[0] == pytest.approx(0.2)  # then 10 s / 100 apart


async def test_a_later_shorter_or_zero_pause_does_not_shorten_the_first() -> None:
    """The window is full of starts 8 s old, so they hold calls back for only 2 s more and
    the pause alone holds them for 5: a later pause that shortened it would show as 2 s
    (on a fresh limiter the pause's own assumed starts would hide that, 5 s either way)."""
    bucket, clock = limiter(margin_s=0.0)
    await starts(bucket, clock, 100)
    clock.now += 8.0
    paused_at = clock.now
    bucket.pause(5.0)
    for shorter in (1.0, 0.0):
        bucket.pause(shorter)
        assert bucket.delay() == pytest.approx(5.0), f"shortened by pause({shorter})"
    (resumed,) = await starts(bucket, clock, 1)
    assert resumed == pytest.approx(paused_at + 5.0)


async def test_a_lower_remaining_count_from_the_server_is_believed() -> None:
    bucket, clock = limiter(margin_s=0.0)
    await starts(bucket, clock, 10)
    bucket.observe({"x-hubspot-ratelimit-remaining": "3"})
    assert bucket.room() == 3
    times = await starts(bucket, clock, 4)
    assert times[2] == times[0]  # three more now
    assert times[3] > times[0]  # then wait
    bucket.observe({"x-hubspot-ratelimit-remaining": "0"})
    assert bucket.room() == 0
    assert bucket.delay() > 0


async def test_a_higher_remaining_count_never_adds_room() -> None:
    bucket, clock = limiter(capacity=5, per_seconds=1.0)
    await starts(bucket, clock, 5)
    bucket.observe({"x-hubspot-ratelimit-remaining": "190"})
    bucket.observe({"x-hubspot-ratelimit-remaining": "soon"})  # not a count: ignored
    bucket.observe({})
    assert bucket.room() == 0
    assert bucket.delay() == pytest.approx(1.02)


@pytest.mark.parametrize(
    ("capacity", "per_seconds", "margin_s", "field"),
    [(0, 10.0, None, "capacity"), (100, 0.0, None, "per_seconds"), (100, 10.0, -1.0, "margin_s")],
)
def test_bad_limits_name_the_field(
    capacity: int, per_seconds: float, margin_s: float | None, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        RollingWindowLimiter(capacity, per_seconds, margin_s=margin_s)
