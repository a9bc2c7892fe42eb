"""The status-back counter, in its own module so that every part that counts (the route's
intake, the consumer, the processor) and the alert tests import it without importing each
other."""

from __future__ import annotations

from prometheus_client import Counter

STATUS_BACK_EVENTS = Counter(
    "ponte_status_back_events_total",
    "CRM webhook events by target and outcome (received, applied, ignored, stale, "
    "duplicate, failed, unreadable).",
    ["target", "outcome"],
)
