"""One batch of CRM events from the status topic, each handled, recorded and (if failed)
dead-lettered before the batch returns, so that the consumer commits offsets only for
events whose fate is written. One deal's events go one after another, oldest first, so
that each sees what the previous one applied; different deals go in parallel."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiokafka import AIOKafkaProducer

from ponte.deliver.origin import OriginClient
from ponte.deliver.status_back.dead_letters import send_dead_letter
from ponte.deliver.status_back.deals import DeliveredDeals
from ponte.deliver.status_back.events import CrmEvent
from ponte.deliver.status_back.metrics import STATUS_BACK_EVENTS
from ponte.deliver.status_back.origin_call import set_origin_status
from ponte.deliver.status_back.outcomes import Outcome, StatusUpdates
from ponte.shared.settings import Settings

ORIGIN_CONCURRENCY = 8
"""Deals whose updates are sent at once within one batch (one deal's events in order)."""


class StatusProcessor:
    """Decides each event's fate: duplicate, ignored, stale, applied at the origin or
    failed, from the stage map of the origin its deal came from."""

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        updates: StatusUpdates,
        deals: DeliveredDeals,
        clients: dict[str, OriginClient],
    ) -> None:
        self.settings = settings
        self._producer = producer
        self._updates = updates
        self._deals = deals
        self._clients = clients

    async def process(self, events: list[CrmEvent]) -> list[Outcome]:
        """Every event handled, recorded and (if failed) dead-lettered before returning."""
        per_deal: dict[tuple[str, str], list[CrmEvent]] = defaultdict(list)
        for event in events:
            per_deal[(event.target_id, event.crm_id)].append(event)
        limit = asyncio.Semaphore(ORIGIN_CONCURRENCY)

        async def one_deal(deal_events: list[CrmEvent]) -> list[Outcome]:
            async with limit:
                return [await self._settle(event) for event in _oldest_first(deal_events)]

        results = await asyncio.gather(*(one_deal(group) for group in per_deal.values()))
        return [outcome for group in results for outcome in group]

    async def _settle(self, event: CrmEvent) -> Outcome:
        """Handle one event and write down its fate (a re-send has one already)."""
        outcome = await self.handle(event)
        if outcome.state == "failed":
            await send_dead_letter(self._producer, self.settings.status_dead_letter_topic, outcome)
        if outcome.state != "duplicate":
            await self._updates.record(outcome)
        STATUS_BACK_EVENTS.labels(event.target_id, outcome.state).inc()
        return outcome

    async def handle(self, event: CrmEvent) -> Outcome:
        if await self._updates.already_handled(event):
            return Outcome(event, "duplicate", "eventId already handled")
        if not event.is_deal_stage_change():
            return Outcome(
                event,
                "ignored",
                f"not a deal stage change ({event.subscription_type} {event.property_name})",
            )
        record = await self._deals.origin_record(event)
        if isinstance(record, Outcome):
            return record
        origin = record.origin
        found = Outcome(
            event,
            "ignored",
            entity=record.entity,
            source_id=record.source_id,
            source_key=record.source_key,
            origin_kind=origin.kind,
        )
        stage = event.property_value or ""
        status = origin.stages.get(stage)
        if status is None:
            found.reason = f"stage {stage!r} is not mapped for source {origin.source}"
            return found
        found.origin_status = status
        newest = await self._updates.newest_applied(
            record.source_id, record.entity, record.source_key
        )
        if newest is not None and event.occurred_at < newest:
            found.state = "stale"
            found.reason = f"an update of {newest.isoformat()} was already applied"
            return found
        return await set_origin_status(found, self._clients[origin.source], self.settings)


def _oldest_first(events: list[CrmEvent]) -> list[CrmEvent]:
    return sorted(events, key=lambda e: (e.occurred_at, e.event_id))
