"""The one HTTP policy every outgoing call follows (pure functions, no network)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import httpx
import pytest

from ponte.shared.http_policy import (
    BACKOFF_CAP_S,
    RetryableError,
    TerminalError,
    backoff_s,
    classify,
    first_to_raise,
    raise_for,
    retry_after_s,
)

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("2.0", 2.0),  # Shopify's decimals
        (" 7 ", 7.0),
        ("-5", 0.0),  # never negative
        ("Fri, 04 Dec 2026 12:01:30 GMT", 90.0),  # an HTTP-date, from now
        ("Fri, 04 Dec 2026 11:00:00 GMT", 0.0),  # already past
        ("soon", None),
        ("inf", None),  # no advice, not a wait forever
        ("1e400", None),
        ("100000", 300.0),  # believed up to MAX_RETRY_AFTER_S
        ("", None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str, seconds: float | None) -> None:
    assert retry_after_s({"retry-after": value}, now=NOW) == seconds


def test_no_retry_after_is_no_advice() -> None:
    assert retry_after_s({}, now=NOW) is None


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "ok"), (204, "ok"), (301, "terminal"), (304, "terminal"),
        (429, "rate_limited"),
        (408, "retryable"), (500, "retryable"), (502, "retryable"), (503, "retryable"),
        (400, "terminal"), (401, "terminal"), (404, "terminal"), (409, "terminal"),
        (422, "terminal"),
    ],
)  # fmt: skip
def test_every_status_has_one_verdict(status: int, verdict: str) -> None:
    assert classify(status) == verdict


def test_raise_for_carries_status_excerpt_and_retry_after() -> None:
    raise_for(httpx.Response(201, text="made"), "POST /x")  # an answer: nothing raised
    with pytest.raises(RetryableError) as retryable:
        raise_for(httpx.Response(429, headers={"Retry-After": "3"}, text="slow"), "POST /x")
    assert str(retryable.value) == "rate limited 429 on POST /x"
    assert (retryable.value.status, retryable.value.retry_after) == (429, 3.0)
    with pytest.raises(TerminalError) as terminal:
        raise_for(httpx.Response(422, text="x" * 900), "PUT /y")
    assert str(terminal.value) == "refused with 422 on PUT /y"
    assert len(terminal.value.excerpt) == 500  # an excerpt, not the whole answer


def test_backoff_is_jittered_under_its_ceiling_and_never_before_retry_after() -> None:
    random.seed(7)
    for attempt in range(1, 12):
        ceiling = min(BACKOFF_CAP_S, 0.5 * 2**attempt)
        waits = [backoff_s(attempt) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling / 2 and min(waits) < ceiling / 2  # spread, not fixed
        assert all(backoff_s(attempt, 45.0) >= 45.0 for _ in range(50))


def test_a_batch_raises_a_bug_first_then_the_slowest_retry_then_the_first_refusal() -> None:
    refused, other_refusal = TerminalError("400"), TerminalError("404")
    quick, slow = RetryableError("503", retry_after=1.0), RetryableError("429", retry_after=9.0)
    bug = KeyError("bug")
    assert first_to_raise(["ok", refused, quick, bug, slow]) is bug
    assert first_to_raise(["ok", refused, quick, slow]) is slow
    assert first_to_raise([other_refusal, "ok", refused]) is other_refusal
    assert first_to_raise(["ok", "ok"]) is None
