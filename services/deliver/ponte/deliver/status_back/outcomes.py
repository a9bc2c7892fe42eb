"""What became of one CRM event, and its row in ``status_updates``: the table is both the
audit of every event's fate and what the consumer consults to drop a HubSpot re-send and
to refuse going back in time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg

from ponte.deliver.status_back.events import CrmEvent


@dataclass
class Outcome:
    """What became of one event: one ``status_updates`` row (and maybe a dead letter)."""

    event: CrmEvent
    state: Literal["applied", "ignored", "stale", "failed", "duplicate"]
    reason: str | None = None
    entity: str | None = None
    source_id: str | None = None
    source_key: str | None = None
    origin_kind: str | None = None
    origin_status: str | None = None
    http_status: int | None = None
    excerpt: str = ""
    attempts: int = 0
    first_attempt: datetime | None = None
    last_attempt: datetime | None = None


class StatusUpdates:
    """The ``status_updates`` table: one row per handled event, keyed (target, eventId)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def already_handled(self, event: CrmEvent) -> bool:
        """A HubSpot re-send: this target's eventId has a row already. A replayed event
        (``ponte replay``) is handled again when its row says it failed: that is what
        replaying it is for; once applied (or ignored, stale), a replay is a repeat."""
        return bool(
            await self._pool.fetchval(
                "SELECT 1 FROM status_updates WHERE target_id = $1 AND event_id = $2 "
                "AND NOT ($3 AND state = 'failed')",
                event.target_id,
                event.event_id,
                event.replayed,
            )
        )

    async def newest_applied(self, source_id: str, entity: str, source_key: str) -> datetime | None:
        """When the newest update applied to this origin record occurred (None: never)."""
        newest: datetime | None = await self._pool.fetchval(
            "SELECT max(occurred_at) FROM status_updates WHERE state = 'applied' "
            "AND source_id = $1 AND entity = $2 AND source_key = $3",
            source_id,
            entity,
            source_key,
        )
        return newest

    async def record(self, outcome: Outcome) -> None:
        event = outcome.event
        await self._pool.execute(
            "INSERT INTO status_updates (target_id, event_id, crm_id, stage, occurred_at, "
            "entity, source_id, source_key, origin_kind, origin_status, state, reason, "
            "http_status, attempts, recorded_at) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
            # Only a replayed retry of a failed event reaches a row that exists (see
            # already_handled): its new fate replaces the failure.
            "ON CONFLICT (target_id, event_id) DO UPDATE SET crm_id = EXCLUDED.crm_id, "
            "stage = EXCLUDED.stage, occurred_at = EXCLUDED.occurred_at, "
            "entity = EXCLUDED.entity, source_id = EXCLUDED.source_id, "
            "source_key = EXCLUDED.source_key, origin_kind = EXCLUDED.origin_kind, "
            "origin_status = EXCLUDED.origin_status, state = EXCLUDED.state, "
            "reason = EXCLUDED.reason, http_status = EXCLUDED.http_status, "
            "attempts = EXCLUDED.attempts, recorded_at = EXCLUDED.recorded_at "
            "WHERE status_updates.state = 'failed'",
            event.target_id,
            event.event_id,
            event.crm_id,
            event.property_value,
            event.occurred_at,
            outcome.entity,
            outcome.source_id,
            outcome.source_key,
            outcome.origin_kind,
            outcome.origin_status,
            outcome.state,
            outcome.reason,
            outcome.http_status,
            outcome.attempts,
            datetime.now(UTC),
        )
