"""The status-back component the deliver app starts: one configuration, the origins'
HTTP clients, the webhook's producer side and the consumer loop, so that the app has one
thing to start, hand to the route and close."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from ponte.deliver.origin import OriginClient, build_client
from ponte.deliver.status_back.config import StatusBackConfig
from ponte.deliver.status_back.deals import DeliveredDeals
from ponte.deliver.status_back.events import CrmEvent, parse_event
from ponte.deliver.status_back.intake import publish_batch
from ponte.deliver.status_back.metrics import STATUS_BACK_EVENTS
from ponte.deliver.status_back.outcomes import Outcome, StatusUpdates
from ponte.deliver.status_back.processor import StatusProcessor
from ponte.shared import db, kafka
from ponte.shared.settings import Settings

log = logging.getLogger(__name__)


class StatusBack:
    """The webhook's producer side and the consumer loop, sharing one configuration."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        config: StatusBackConfig,
    ) -> None:
        self.settings = settings
        self.config = config
        self._producer = producer
        self._clients: dict[str, OriginClient] = {}
        self._http: list[httpx.AsyncClient] = []
        for source_id, origin in config.origins.items():
            client, http = build_client(origin, settings.deliver_timeout_s)
            self._clients[source_id] = client
            self._http.append(http)
        self._processor = StatusProcessor(
            settings,
            producer,
            StatusUpdates(pool),
            DeliveredDeals(pool, config.origins),
            self._clients,
        )
        self.running = False

    async def aclose(self) -> None:
        for http in self._http:
            await http.aclose()

    async def accept(self, target_id: str, events: list[dict[str, Any]]) -> None:
        """Every event in the status topic and acknowledged, or ``BrokerUnavailable``."""
        await publish_batch(self._producer, self.settings, target_id, events)

    async def run(self, stop: asyncio.Event) -> None:
        make = partial(
            kafka.create_consumer,
            self.settings,
            self.settings.status_topic,
            group_id=self.settings.status_group_id,
            client="status-back",
            max_poll_records=500,
        )
        # An outage (database, broker) delays the batch; it never ends the loop.
        await kafka.consume(
            make,
            stop,
            "status-back",
            poll=lambda consumer: consumer.getmany(timeout_ms=100, max_records=500),
            parse=lambda batch: kafka.parse_records(batch, parse_event, _unreadable),
            apply=self.process,
            transient=(*db.UNAVAILABLE, KafkaError),
            on_running=self._set_running,
        )

    def _set_running(self, running: bool) -> None:
        self.running = running

    async def process(self, events: list[CrmEvent]) -> list[Outcome]:
        """Every event handled, recorded and (if failed) dead-lettered before returning."""
        return await self._processor.process(events)


def _unreadable(record: ConsumerRecord[bytes, bytes]) -> None:
    log.error(
        "not a CRM webhook event; skipped",
        extra={"partition": record.partition, "offset": record.offset},
    )
    STATUS_BACK_EVENTS.labels("-", "unreadable").inc()
