"""How Ponte treats the answers of the HTTP APIs it calls: CRMs (deliver's connectors),
shops and ERPs (status back), ERP APIs (pulls). One policy, so a 429 or a 503 means the
same thing whichever service meets it.

- **Classification** (``classify``): 2xx are answers; a 3xx is *terminal* (the calls do
  not follow redirects, so nothing was written); 429 is *rate limited* (wait as
  long as the server says, and slow the caller's whole token bucket); 408 and 5xx are
  *retryable* (the same call may pass later); every other 4xx is *terminal* (retrying a
  validation error forever is how today's integrations clog). A transport error (timeout,
  refused connection) is retryable.
- **Retry-After** (``retry_after_s``): seconds (decimals too: Shopify sends ``2.0``) or an
  HTTP-date (RFC 9110 section 10.2.3), never negative, at most ``MAX_RETRY_AFTER_S``;
  anything else (``inf`` included) is no advice.
- **Backoff** (``backoff_s``, ``tenacity_wait``): exponential with full jitter, capped at
  30 s, never sooner than the server's Retry-After.
- **A batch's error** (``first_to_raise``): once every call of a batch was tried, an
  unexpected exception (a bug) is raised first; then the retryable error asking for the
  longest wait, because the batch may pass later and each connector's writes are
  idempotent on retry; else the first refusal.

The errors are ``RetryableError`` and ``TerminalError``, both ``CallFailed``, carrying the
status, an excerpt of the answer and the server's Retry-After.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
from tenacity import RetryCallState

Verdict = Literal["ok", "rate_limited", "retryable", "terminal"]

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
EXCERPT_CHARS = 500
MAX_RETRY_AFTER_S = 300.0
"""The longest a server's Retry-After is believed: a mistaken or hostile header must not
stall a target (every target's bucket pauses for it) for hours."""


class CallFailed(Exception):
    """A call to a remote API did not do what was asked."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        excerpt: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.excerpt = excerpt[:EXCERPT_CHARS]
        self.retry_after = retry_after


class RetryableError(CallFailed):
    """May work later: 429, 408, 5xx, a timeout, a connection error."""


class TerminalError(CallFailed):
    """Will not work as sent: any other 4xx."""


def classify(status: int) -> Verdict:
    if status < 300:
        return "ok"
    if status < 400:
        return "terminal"  # a redirect wrote nothing: calls do not follow them
    if status == 429:
        return "rate_limited"
    if status == 408 or status >= 500:
        return "retryable"
    return "terminal"


def retry_after_s(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """The server's ``Retry-After`` in seconds from ``now``; None when absent or unreadable."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            return None  # "inf" or "1e400" is no advice, not a wait forever
        return min(max(0.0, seconds), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT by definition
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - (now or datetime.now(UTC))).total_seconds()), MAX_RETRY_AFTER_S)


def raise_for(response: httpx.Response, what: str) -> None:
    """Raise the answer's failure, if it is one, under this policy."""
    status = response.status_code
    verdict = classify(status)
    if verdict == "ok":
        return
    if verdict == "terminal":
        raise TerminalError(
            f"refused with {status} on {what}", status=status, excerpt=response.text
        )
    kind = "rate limited" if verdict == "rate_limited" else "server error"
    raise RetryableError(
        f"{kind} {status} on {what}",
        status=status,
        excerpt=response.text,
        retry_after=retry_after_s(response.headers),
    )


def transport_failed(error: Exception, what: str) -> RetryableError:
    """The error for a call that got no answer (timeout, connection refused or reset)."""
    return RetryableError(f"{type(error).__name__} on {what}")


def backoff_s(attempt: int, retry_after: float | None = None) -> float:
    """The wait before attempt ``attempt + 1``: full jitter over an exponential ceiling,
    but never less than the server asked for."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
    return max(random.uniform(0, ceiling), retry_after or 0.0)  # noqa: S311


def tenacity_wait(state: RetryCallState) -> float:
    """``backoff_s`` as a tenacity ``wait=``, reading Retry-After off the failed attempt."""
    error = state.outcome.exception() if state.outcome else None
    floor = error.retry_after if isinstance(error, CallFailed) else None
    return backoff_s(state.attempt_number, floor)


def slowest(errors: Iterable[RetryableError]) -> RetryableError:
    """Of several retryable errors, the one asking for the longest wait."""
    return max(errors, key=lambda error: error.retry_after or 0.0)


def first_to_raise(results: Iterable[object]) -> BaseException | None:
    """The one error a batch of calls raises once every call was tried (see the module)."""
    errors = [result for result in results if isinstance(result, BaseException)]
    for error in errors:
        if not isinstance(error, CallFailed):
            return error
    retryable = [error for error in errors if isinstance(error, RetryableError)]
    if retryable:
        return slowest(retryable)
    return errors[0] if errors else None
