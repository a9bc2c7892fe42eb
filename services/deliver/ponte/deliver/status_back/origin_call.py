"""Setting the mapped status on the origin: 429, 5xx and timeouts retried with backoff,
never sooner than the origin's Retry-After, within the deliver service's attempt and age
limits; the outcome says what the origin last answered."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from ponte.deliver.origin import OriginClient, StatusUpdate
from ponte.deliver.status_back.outcomes import Outcome
from ponte.shared.http_policy import RetryableError, TerminalError, tenacity_wait
from ponte.shared.settings import Settings

log = logging.getLogger(__name__)


def status_update(outcome: Outcome) -> StatusUpdate:
    """The origin call for an event whose origin record and status are known."""
    event = outcome.event
    assert outcome.source_key is not None and outcome.origin_status is not None
    return StatusUpdate(
        source_key=outcome.source_key,
        status=outcome.origin_status,
        stage=event.property_value or "",
        crm_id=event.crm_id,
        occurred_at=event.occurred_at,
        update_id=f"{event.target_id}-{event.event_id}",
    )


async def set_origin_status(outcome: Outcome, client: OriginClient, settings: Settings) -> Outcome:
    """Call the origin (with retries); ``outcome`` becomes applied or failed."""
    update = status_update(outcome)
    outcome.first_attempt = datetime.now(UTC)
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(settings.deliver_max_attempts)
            | stop_after_delay(settings.deliver_max_age_s),
            wait=tenacity_wait,
            reraise=True,
        ):
            with attempt:
                outcome.attempts += 1
                response = await client.set_status(update)
    except (RetryableError, TerminalError) as error:
        _failed(outcome, error)
    else:
        outcome.state = "applied"
        outcome.reason = None
        outcome.http_status = response.status_code
    outcome.last_attempt = datetime.now(UTC)
    return outcome


def _failed(outcome: Outcome, error: RetryableError | TerminalError) -> None:
    kind = "gave up after retries" if isinstance(error, RetryableError) else "refused"
    outcome.state = "failed"
    outcome.reason = f"{kind}: {error}"
    outcome.http_status = error.status
    outcome.excerpt = error.excerpt
    log.warning(
        "status update failed",
        extra={
            "target": outcome.event.target_id,
            "source": outcome.source_id,
            "status": error.status,
            "attempts": outcome.attempts,
        },
    )
