"""Status back to the origin: a CRM's stage change goes back to the shop or ERP the order
came from (seed 004: "actualización de información en origen").

Two halves, joined by a Kafka topic so that durability never depends on the shop:

1. ``POST /crm-webhooks/hubspot/{target_id}`` takes HubSpot's webhook batch, checks its v3
   signature (below), and answers 200 only once every event is in ``status_topic``
   (``acks=all``); 503 + Retry-After when the broker does not acknowledge in time, so
   HubSpot re-sends (it retries 5xx and timeouts). Events are keyed ``target/objectId``:
   one deal's events stay in one partition, in order.
2. ``StatusBack.run`` reads that topic with manual commits. Per event: drop a HubSpot
   re-send (``eventId`` already recorded), keep only deal-stage changes, find the record
   Ponte delivered as that deal (``deliveries``: target + CRM id -> entity, source,
   source key), map the stage with the origin's ``stages`` (``ponte.deliver.origin``),
   refuse to go back in time (an event older than the newest one applied to that origin
   record is ``stale``), and call the origin: 429/5xx/timeouts retried with backoff,
   never sooner than Retry-After; a refusal (other 4xx) or exhausted retries go to
   ``status_dead_letter_topic`` with the deliver engine's headers. Every event's fate is a
   row in ``status_updates``. Offsets are committed only after that.

Delivery is at least once towards the origin: a crash between the origin's answer and the
row being written repeats that one call on restart. The calls are idempotent (close a
closed order, set a status it already has), so the repeat changes nothing.

HubSpot's v3 signature (developers.hubspot.com, "Validating requests"): base64 of
HMAC-SHA256, keyed by the app's client secret, over ``method + URI + body + timestamp``,
where the timestamp is ``X-HubSpot-Request-Timestamp`` (milliseconds) and must be at most
five minutes old, and the URI is the full URL HubSpot called, with ``%3A %2F %3F %40 %21
%24 %27 %28 %29 %2A %2C %3B`` decoded. Behind a proxy the URL Ponte sees is not the one
HubSpot called, so each webhook target can name its ``public_base_url``.

```yaml
crm_webhooks:                    # in the targets file, beside targets: and origins:
  - target: hubspot-main         # POST /crm-webhooks/hubspot/hubspot-main
    client_secret: ${HUBSPOT_CLIENT_SECRET}
    public_base_url: https://ponte.example.com   # what HubSpot calls (before the path)
```
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from ponte.deliver.origin import (
    ErpOrigin,
    OriginClient,
    ShopifyOrigin,
    StatusUpdate,
    WooCommerceOrigin,
    build_client,
    load_origins,
)
from ponte.shared import db, kafka
from ponte.shared.config_files import load_entries
from ponte.shared.http_policy import RetryableError, TerminalError, tenacity_wait
from ponte.shared.settings import Settings
from ponte.shared.validation_errors import every_problem

log = logging.getLogger(__name__)

HUBSPOT_MAX_AGE_S = 300
"""HubSpot: reject a request whose timestamp is older than five minutes (a replay)."""
HUBSPOT_MAX_AHEAD_S = 60
"""A timestamp this far in the future is not a clock skew but a forgery."""
SIGNATURE_HEADER = "x-hubspot-signature-v3"
TIMESTAMP_HEADER = "x-hubspot-request-timestamp"
_URI_DECODED = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
"""The escapes HubSpot decodes before signing the URI (any letter case)."""
DEAL_STAGE = "dealstage"
DEALS_OBJECT_TYPE_ID = "0-3"
ORIGIN_CONCURRENCY = 8
"""Deals whose updates are sent at once within one batch (one deal's events in order)."""

STATUS_BACK_EVENTS = Counter(
    "ponte_status_back_events_total",
    "CRM webhook events by target and outcome (received, applied, ignored, stale, "
    "duplicate, failed, unreadable).",
    ["target", "outcome"],
)


# --- configuration ------------------------------------------------------------------------


class CrmWebhook(BaseModel):
    """One CRM target that may call Ponte back, and how its calls are authenticated."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    kind: Literal["hubspot"] = "hubspot"
    client_secret: str = Field(min_length=1, repr=False)
    public_base_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")
    """The scheme, host (and any path prefix) HubSpot calls; None: the URL as received."""

    def signed_uri(self, request: Request) -> str:
        """The URI HubSpot signed: the public base URL + the path Ponte received (a proxy
        that strips a prefix must be given that prefix in ``public_base_url``)."""
        if self.public_base_url is None:
            return str(request.url)
        query = request.url.query
        path = request.url.path
        return self.public_base_url.rstrip("/") + path + (f"?{query}" if query else "")


@dataclass
class StatusBackConfig:
    webhooks: dict[str, CrmWebhook] = field(default_factory=dict)
    origins: dict[str, ShopifyOrigin | WooCommerceOrigin | ErpOrigin] = field(default_factory=dict)


def load_config(path: Path | None) -> StatusBackConfig:
    """``crm_webhooks:`` and ``origins:`` of the targets file (both optional); an invalid
    entry is an error naming it and the field."""
    if path is None:
        return StatusBackConfig()
    webhooks: dict[str, CrmWebhook] = {}
    for index, entry in enumerate(load_entries(path, "crm_webhooks")):
        try:
            webhook = CrmWebhook.model_validate(entry)
        except ValidationError as error:
            details = every_problem(error)
            raise ValueError(f"{path}: crm_webhooks[{index}]: {details}") from None
        webhooks[webhook.target] = webhook
    return StatusBackConfig(webhooks, load_origins(path))


# --- HubSpot's v3 signature ---------------------------------------------------------------


class SignatureRejected(Exception):
    """Why a CRM webhook is not believed; the message names the header, never a secret."""


def hubspot_uri(uri: str) -> str:
    """The URI as HubSpot signs it: the listed escapes decoded, nothing else."""
    for escaped, character in _URI_DECODED.items():
        uri = uri.replace(escaped, character).replace(escaped.lower(), character)
    return uri


def sign_hubspot_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """The ``X-HubSpot-Signature-v3`` value for a request (HubSpot's side; tests use it)."""
    content = f"{method.upper()}{hubspot_uri(uri)}".encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha256).digest()).decode()


def verify_hubspot_v3(
    headers: Any, method: str, uri: str, body: bytes, secret: str, now: float | None = None
) -> None:
    """Raise ``SignatureRejected`` unless the request carries a fresh, valid signature."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature:
        raise SignatureRejected("X-HubSpot-Signature-v3 is missing")
    if not timestamp or not timestamp.isdigit():
        raise SignatureRejected("X-HubSpot-Request-Timestamp is missing or not milliseconds")
    age_s = (now if now is not None else time.time()) - int(timestamp) / 1000
    if age_s > HUBSPOT_MAX_AGE_S:
        raise SignatureRejected(
            f"X-HubSpot-Request-Timestamp is {int(age_s)} s old (at most {HUBSPOT_MAX_AGE_S})"
        )
    if age_s < -HUBSPOT_MAX_AHEAD_S:
        raise SignatureRejected("X-HubSpot-Request-Timestamp is in the future")
    expected = sign_hubspot_v3(secret, method, uri, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise SignatureRejected("X-HubSpot-Signature-v3 does not match the request")


# --- events -------------------------------------------------------------------------------


class InvalidBatch(ValueError):
    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field = field_name


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    """HubSpot's webhook body: a JSON array of events, each with the fields Ponte keys on."""
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidBatch("body is not JSON", "body") from None
    if not isinstance(events, list):
        raise InvalidBatch("body must be a JSON array of events", "body")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise InvalidBatch(f"[{index}] is not an object", f"[{index}]")
        for name in ("eventId", "objectId", "occurredAt"):
            value = event.get(name)
            if not isinstance(value, int | str) or isinstance(value, bool) or value == "":
                raise InvalidBatch(f"[{index}].{name} is missing", f"[{index}].{name}")
        if not str(event["occurredAt"]).isdigit():
            raise InvalidBatch(
                f"[{index}].occurredAt is not milliseconds since the epoch",
                f"[{index}].occurredAt",
            )
        if not isinstance(event.get("subscriptionType"), str):
            raise InvalidBatch(
                f"[{index}].subscriptionType is missing", f"[{index}].subscriptionType"
            )
    return events


@dataclass
class CrmEvent:
    """One HubSpot event as read back from the status topic."""

    target_id: str
    event_id: str
    crm_id: str
    subscription_type: str
    object_type_id: str | None
    property_name: str | None
    property_value: str | None
    occurred_at: datetime
    raw: dict[str, Any]
    topic: str
    partition: int
    offset: int

    def is_deal_stage_change(self) -> bool:
        deal = self.subscription_type == "deal.propertyChange" or (
            self.subscription_type == "object.propertyChange"
            and self.object_type_id == DEALS_OBJECT_TYPE_ID
        )
        return deal and self.property_name == DEAL_STAGE and self.property_value is not None


def parse_event(record: ConsumerRecord[bytes, bytes]) -> CrmEvent | None:
    """A status-topic message, or None for one that is not (counted by the caller)."""
    try:
        data = orjson.loads(record.value or b"")
        event = data["event"]
        value_of = event.get("propertyValue")
        return CrmEvent(
            target_id=str(data["target"]),
            event_id=str(event["eventId"]),
            crm_id=str(event["objectId"]),
            subscription_type=str(event["subscriptionType"]),
            object_type_id=event.get("objectTypeId"),
            property_name=event.get("propertyName"),
            property_value=None if value_of is None else str(value_of),
            occurred_at=datetime.fromtimestamp(int(event["occurredAt"]) / 1000, UTC),
            raw=event,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _unreadable(record: ConsumerRecord[bytes, bytes]) -> None:
    log.error(
        "not a CRM webhook event; skipped",
        extra={"partition": record.partition, "offset": record.offset},
    )
    STATUS_BACK_EVENTS.labels("-", "unreadable").inc()


# --- the status-back component ------------------------------------------------------------


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time; the webhook must not be acknowledged."""


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
        self._pool = pool
        self._producer = producer
        self._clients: dict[str, OriginClient] = {}
        self._http: list[httpx.AsyncClient] = []
        for source_id, origin in config.origins.items():
            client, http = build_client(origin, settings.deliver_timeout_s)
            self._clients[source_id] = client
            self._http.append(http)
        self._entities = sorted({origin.entity for origin in config.origins.values()})
        self.running = False

    async def aclose(self) -> None:
        for http in self._http:
            await http.aclose()

    # --- the webhook side -------------------------------------------------------------

    async def accept(self, target_id: str, events: list[dict[str, Any]]) -> None:
        """Every event in the status topic and acknowledged, or ``BrokerUnavailable``."""
        received_at = datetime.now(UTC).isoformat()
        try:
            async with asyncio.timeout(self.settings.produce_timeout_s):
                acks = [
                    await self._producer.send(
                        self.settings.status_topic,
                        value=orjson.dumps(
                            {"target": target_id, "received_at": received_at, "event": event}
                        ),
                        key=f"{target_id}/{event['objectId']}".encode(),
                        headers=[
                            ("ponte-target", target_id.encode()),
                            ("ponte-crm-event-id", str(event["eventId"]).encode()),
                        ],
                    )
                    for event in events
                ]
                # asyncio.wait, not gather: on our timeout the producer's futures must not
                # be cancelled under it (a late ack is harmless: the consumer dedups).
                if acks:
                    done, _ = await asyncio.wait(acks)
                    for ack in done:
                        ack.result()
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker did not acknowledge within {self.settings.produce_timeout_s}s"
            ) from None
        except KafkaError as error:
            raise BrokerUnavailable(
                f"the broker refused the write ({type(error).__name__})"
            ) from None
        STATUS_BACK_EVENTS.labels(target_id, "received").inc(len(events))

    # --- the consumer side ------------------------------------------------------------

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
        """Every event handled, recorded and (if failed) dead-lettered before returning.

        One deal's events are handled one after another, oldest first, so that each sees
        what the previous one applied; different deals go in parallel.
        """
        per_deal: dict[tuple[str, str], list[CrmEvent]] = defaultdict(list)
        for event in events:
            per_deal[(event.target_id, event.crm_id)].append(event)
        limit = asyncio.Semaphore(ORIGIN_CONCURRENCY)

        async def one_deal(deal_events: list[CrmEvent]) -> list[Outcome]:
            outcomes = []
            async with limit:
                for event in sorted(deal_events, key=lambda e: (e.occurred_at, e.event_id)):
                    outcome = await self._handle(event)
                    if outcome.state == "failed":
                        await self._dead_letter(outcome)
                    if outcome.state != "duplicate":
                        await self._record(outcome)
                    STATUS_BACK_EVENTS.labels(event.target_id, outcome.state).inc()
                    outcomes.append(outcome)
            return outcomes

        results = await asyncio.gather(*(one_deal(group) for group in per_deal.values()))
        return [outcome for group in results for outcome in group]

    async def _handle(self, event: CrmEvent) -> Outcome:
        if await self._pool.fetchval(
            "SELECT 1 FROM status_updates WHERE target_id = $1 AND event_id = $2",
            event.target_id,
            event.event_id,
        ):
            return Outcome(event, "duplicate", "eventId already handled")
        if not event.is_deal_stage_change():
            return Outcome(
                event,
                "ignored",
                f"not a deal stage change ({event.subscription_type} {event.property_name})",
            )
        rows = await self._pool.fetch(
            "SELECT entity, source_id, source_key FROM deliveries "
            "WHERE target_id = $1 AND crm_id = $2 AND entity = ANY($3::text[]) "
            "ORDER BY updated_at DESC",
            event.target_id,
            event.crm_id,
            self._entities,
        )
        if not rows:
            return Outcome(event, "ignored", f"deal {event.crm_id} was not delivered by Ponte")
        candidates = [
            r
            for r in rows
            if r["source_id"] in self.config.origins
            and self.config.origins[r["source_id"]].entity == r["entity"]
        ]
        if len(candidates) > 1:
            # Two Ponte records delivered to one CRM record (an earlier wrong match, or a
            # merge in the CRM): the status could belong to either origin. Refuse, visibly.
            listed = ", ".join(
                f"{r['source_id']}/{r['entity']}/{r['source_key']}" for r in candidates
            )
            return Outcome(
                event,
                "failed",
                f"deal {event.crm_id} is the CRM record of {len(candidates)} Ponte records "
                f"({listed}); Ponte will not guess which origin this status is for",
            )
        row = candidates[0] if candidates else None
        if row is None:
            return Outcome(
                event,
                "ignored",
                f"no origin configured for source {rows[0]['source_id']}",
                rows[0]["entity"],
                rows[0]["source_id"],
                rows[0]["source_key"],
            )
        origin = self.config.origins[row["source_id"]]
        found = Outcome(
            event,
            "ignored",
            entity=row["entity"],
            source_id=row["source_id"],
            source_key=row["source_key"],
            origin_kind=origin.kind,
        )
        stage = event.property_value or ""
        status = origin.stages.get(stage)
        if status is None:
            found.reason = f"stage {stage!r} is not mapped for source {origin.source}"
            return found
        found.origin_status = status
        newest = await self._pool.fetchval(
            "SELECT max(occurred_at) FROM status_updates WHERE state = 'applied' "
            "AND source_id = $1 AND entity = $2 AND source_key = $3",
            row["source_id"],
            row["entity"],
            row["source_key"],
        )
        if newest is not None and event.occurred_at < newest:
            found.state = "stale"
            found.reason = f"an update of {newest.isoformat()} was already applied"
            return found
        return await self._call(found, self._clients[origin.source])

    async def _call(self, outcome: Outcome, client: OriginClient) -> Outcome:
        event = outcome.event
        assert outcome.source_key is not None and outcome.origin_status is not None
        update = StatusUpdate(
            source_key=outcome.source_key,
            status=outcome.origin_status,
            stage=event.property_value or "",
            crm_id=event.crm_id,
            occurred_at=event.occurred_at,
            update_id=f"{event.target_id}-{event.event_id}",
        )
        outcome.first_attempt = datetime.now(UTC)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RetryableError),
                stop=stop_after_attempt(self.settings.deliver_max_attempts)
                | stop_after_delay(self.settings.deliver_max_age_s),
                wait=tenacity_wait,
                reraise=True,
            ):
                with attempt:
                    outcome.attempts += 1
                    response = await client.set_status(update)
        except (RetryableError, TerminalError) as error:
            kind = "gave up after retries" if isinstance(error, RetryableError) else "refused"
            outcome.state = "failed"
            outcome.reason = f"{kind}: {error}"
            outcome.http_status = error.status
            outcome.excerpt = error.excerpt
            log.warning(
                "status update failed",
                extra={
                    "target": event.target_id,
                    "source": outcome.source_id,
                    "status": error.status,
                    "attempts": outcome.attempts,
                },
            )
        else:
            outcome.state = "applied"
            outcome.reason = None
            outcome.http_status = response.status_code
        outcome.last_attempt = datetime.now(UTC)
        return outcome

    async def _dead_letter(self, outcome: Outcome) -> None:
        """The failed update to the dead-letter topic, acknowledged before offsets move;
        the headers are the deliver engine's, so the same tools read both topics."""
        event = outcome.event
        now = datetime.now(UTC)
        headers = {
            "ponte-target": event.target_id,
            "ponte-dlq-reason": (outcome.reason or "")[:500],
            "ponte-dlq-status": str(outcome.http_status or ""),
            "ponte-dlq-response": outcome.excerpt[:500],
            "ponte-dlq-attempts": str(outcome.attempts),
            "ponte-dlq-first-attempt": (outcome.first_attempt or now).isoformat(),
            "ponte-dlq-last-attempt": (outcome.last_attempt or now).isoformat(),
            "ponte-original-topic": event.topic,
            "ponte-original-partition": str(event.partition),
            "ponte-original-offset": str(event.offset),
            "ponte-entity": outcome.entity or "",
            "ponte-source": outcome.source_id or "",
        }
        value = orjson.dumps(
            {
                "target": event.target_id,
                "event": event.raw,
                "origin": {
                    "source": outcome.source_id,
                    "kind": outcome.origin_kind,
                    "entity": outcome.entity,
                    "source_key": outcome.source_key,
                    "status": outcome.origin_status,
                },
            }
        )
        ack = await self._producer.send(
            self.settings.status_dead_letter_topic,
            value=value,
            key=f"{outcome.source_id}/{outcome.entity}/{outcome.source_key}".encode(),
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
        await ack

    async def _record(self, outcome: Outcome) -> None:
        event = outcome.event
        await self._pool.execute(
            "INSERT INTO status_updates (target_id, event_id, crm_id, stage, occurred_at, "
            "entity, source_id, source_key, origin_kind, origin_status, state, reason, "
            "http_status, attempts, recorded_at) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
            "ON CONFLICT (target_id, event_id) DO NOTHING",
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


# --- the route ----------------------------------------------------------------------------

router = APIRouter(prefix="/crm-webhooks", tags=["status-back"])


def get_status_back(request: Request) -> StatusBack:
    status_back: StatusBack = request.app.state.status_back
    return status_back


StatusBackDep = Annotated[StatusBack, Depends(get_status_back)]


class CrmAccepted(BaseModel):
    accepted: int = Field(description="Events written to the status topic.")


class CrmProblem(BaseModel):
    error: str = Field(description="Stable machine-readable reason, e.g. bad_signature.")
    message: str = Field(description="What is wrong, naming the field or header at fault.")
    field: str | None = None


def _problem(
    status: int, error: str, message: str, field_name: str | None = None, **headers: str
) -> JSONResponse:
    body = CrmProblem(error=error, message=message, field=field_name).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers or None)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body (the signature covers its exact bytes), or None past ``limit``."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/hubspot/{target_id}",
    response_model=CrmAccepted,
    responses={
        status: {"model": CrmProblem, "description": description}
        for status, description in {
            400: "Body not a JSON array of HubSpot events; the message names the field.",
            401: "X-HubSpot-Signature-v3 missing or wrong, or its timestamp too old.",
            404: "No crm_webhooks entry for this target.",
            413: "Body over the configured limit.",
            503: "The broker did not acknowledge in time; nothing was accepted. Retry later.",
        }.items()
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "HubSpot's webhook batch (deal.propertyChange events).",
                    }
                }
            },
        }
    },
    summary="Receive HubSpot's signed webhook batch (deal stage changes)",
)
async def hubspot_webhook(
    target_id: str, request: Request, status_back: StatusBackDep
) -> JSONResponse:
    """Answers 200 only once every event of the batch is in the status topic; the deliver
    service then sets the mapped status on the order's origin (shop or ERP)."""
    webhook = status_back.config.webhooks.get(target_id)
    if webhook is None:
        return _problem(404, "unknown_target", f"no crm_webhooks entry for {target_id!r}")
    body = await _read_body(request, status_back.settings.max_body_bytes)
    if body is None:
        return _problem(413, "body_too_large", "body over the configured limit", "body")
    try:
        verify_hubspot_v3(
            request.headers,
            request.method,
            webhook.signed_uri(request),
            body,
            webhook.client_secret,
        )
    except SignatureRejected as error:
        log.warning("CRM webhook refused", extra={"target": target_id, "reason": str(error)})
        return _problem(401, "bad_signature", str(error))
    try:
        events = parse_batch(body)
    except InvalidBatch as error:
        return _problem(400, "invalid_body", str(error), error.field)
    try:
        await status_back.accept(target_id, events)
    except BrokerUnavailable as error:
        log.error("broker unavailable; answered 503", extra={"target": target_id})
        return _problem(
            503,
            "broker_unavailable",
            str(error),
            **{"Retry-After": str(status_back.settings.retry_after_s)},
        )
    return JSONResponse(CrmAccepted(accepted=len(events)).model_dump())
