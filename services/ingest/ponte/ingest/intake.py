"""What happens to one webhook request, in order; the route only adapts HTTP to this.

source known and active (404) -> client address allowed (403) -> body within the limit
(413) -> signature (401) -> WooCommerce ping (200) -> body decoded within the edge's limits
(``strict_json``) and valid (400/415/422) -> table allowed (403) -> not a re-delivery
(200 duplicate / 409 in flight) -> broker acknowledged (503 + Retry-After otherwise)
-> 202 with Ponte's event id.

Every outcome, accepted or not, becomes one history row and one metric sample; so does
a failure nobody foresaw (a 500, outcome ``error``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import ClientDisconnect

from ponte.ingest.addresses import check_allowed, client_address
from ponte.ingest.deliveries import Delivery, is_woocommerce_ping, parse_delivery
from ponte.ingest.history import HistoryEntry, HistoryWriter
from ponte.ingest.publisher import BrokerUnavailable, EventPublisher
from ponte.ingest.receipts import Claim, Receipts
from ponte.ingest.registry import KnownSource, SourceRegistry
from ponte.shared import signatures
from ponte.shared.logs import printable
from ponte.shared.mapping import mapping_for
from ponte.shared.metrics import (
    INGEST_BODY_BYTES,
    INGEST_DEDUP_UNAVAILABLE,
    INGEST_DUPLICATES,
    INGEST_EVENTS,
    INGEST_LAST_ACCEPTED,
    INGEST_LATENCY,
    INGEST_REQUESTS,
)
from ponte.shared.rejections import Rejection
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind, spec_of

log = logging.getLogger(__name__)


class _Children:
    """A metric's label children, looked up once per label values: ``.labels()`` takes a
    lock and validates the values on every call, several times per webhook."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(self._children) >= 10_000:  # source ids come from the URL: stay bounded
                self._children.clear()
            child = self._children[values] = self._metric.labels(*values)
        return child


_REQUESTS = _Children(INGEST_REQUESTS)
_LATENCY = _Children(INGEST_LATENCY)
_BODY_BYTES = _Children(INGEST_BODY_BYTES)
_EVENTS = _Children(INGEST_EVENTS)
_LAST_ACCEPTED = _Children(INGEST_LAST_ACCEPTED)
_DUPLICATES = _Children(INGEST_DUPLICATES)


@dataclass
class IncomingRequest:
    """The parts of an HTTP request intake needs (so it can be driven without HTTP)."""

    source_id: str
    headers: Mapping[str, str]
    peer: str | None
    body_chunks: AsyncIterator[bytes]
    forwarded_for: str | None = None
    """Every X-Forwarded-For line, joined in order: a proxy may append its own line after
    one the client forged, and only the whole chain read from the right is trustworthy."""


@dataclass
class Answer:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Trace:
    """What we learnt about the request so far, for the history row."""

    received_at: datetime
    started: float
    source: KnownSource | None = None
    client_ip: str | None = None
    body: bytes | None = None
    size: int = 0
    delivery: Delivery | None = None
    warnings: list[str] = field(default_factory=list)


class Intake:
    def __init__(
        self,
        settings: Settings,
        registry: SourceRegistry,
        publisher: EventPublisher,
        receipts: Receipts,
        history: HistoryWriter,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._publisher = publisher
        self._receipts = receipts
        self._history = history
        self._keys: dict[str, dict[str, list[str]]] = {}

    async def handle(self, request: IncomingRequest) -> Answer:
        trace = _Trace(received_at=datetime.now(UTC), started=time.perf_counter())
        outcome = "rejected"
        reason: str | None = None
        tables: list[str] = []
        try:
            answer, outcome = await self._accept(request, trace)
        except Rejection as rejection:
            answer = Answer(rejection.status_code, rejection.body(), rejection.headers)
            reason = rejection.code
            tables = rejection.tables
        except ClientDisconnect:
            raise  # nobody to answer; as Starlette, nothing was accepted or recorded
        except Exception:
            # A failure nobody foresaw is still answered and recorded: every request has
            # its history row, the 500s most of all.
            log.exception("webhook failed", extra={"source": printable(request.source_id)})
            answer = Answer(
                500,
                {
                    "error": "internal_error",
                    "message": "Ponte failed to handle this delivery; nothing was accepted. "
                    "Retry later",
                },
            )
            outcome, reason = "error", "internal_error"
        if trace.delivery is not None:
            tables = trace.delivery.tables
        self._observe(request, trace, answer, outcome, reason, tables)
        return answer

    async def _accept(self, request: IncomingRequest, trace: _Trace) -> tuple[Answer, str]:
        source = self._registry.get(request.source_id)
        if source is None or not source.config.active:
            state = "inactive" if source else "unknown"
            raise Rejection(
                404, "unknown_source", f"source {request.source_id!r} is {state}", field="source_id"
            )
        trace.source = source
        config = source.config
        headers = request.headers
        trace.client_ip = client_address(
            request.peer, request.forwarded_for, source.trusted_proxies
        )
        check_allowed(trace.client_ip, source.allowed, config.id)
        trace.body = await self._read_body(request, trace)
        if config.kind is SourceKind.WOOCOMMERCE and is_woocommerce_ping(headers, trace.body):
            return Answer(200, {"ping": True, "source": config.id}), "ping"
        signatures.verify(
            config.kind,
            headers,
            trace.body,
            config.secrets,
            tolerance_s=self._settings.signature_tolerance_s,
        )
        delivery = parse_delivery(
            config.kind,
            config.id,
            headers,
            trace.body,
            trace.received_at,
            self._key_fields(config.kind, config.id),
            config.charset,
            trace.warnings,
        )
        trace.delivery = delivery
        for table in delivery.tables:
            if not config.allows_table(table):
                raise Rejection(
                    403,
                    "table_not_allowed",
                    f"table {table!r} is not allowed for source {config.id}",
                    field="table",
                )
        return await self._publish_once(config.id, delivery, headers.get("content-type"))

    def _key_fields(self, kind: SourceKind, source_id: str) -> dict[str, list[str]] | None:
        """The record keys of the source's mapping (read once per source): ingest shares
        the transform's mapping files so both key a record the same way."""
        if spec_of(kind).body != "envelope":  # a shop resource is keyed by its own id
            return None
        if source_id not in self._keys:
            self._keys[source_id] = mapping_for(
                kind, source_id, self._settings.mappings_dir
            ).record_key_fields()
        return self._keys[source_id]

    async def _read_body(self, request: IncomingRequest, trace: _Trace) -> bytes:
        limit = self._settings.max_body_bytes
        declared = request.headers.get("content-length")
        too_large = Rejection(
            413, "body_too_large", f"body is over the limit of {limit} bytes", field="body"
        )
        if declared and declared.isdigit() and int(declared) > limit:
            trace.size = int(declared)
            raise too_large
        chunks: list[bytes] = []
        async for chunk in request.body_chunks:
            trace.size += len(chunk)
            if trace.size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _publish_once(
        self, source_id: str, delivery: Delivery, content_type: str | None
    ) -> tuple[Answer, str]:
        claim = await self._receipts.claim(source_id, delivery.dedup_key, delivery.delivery_id)
        if claim.claim is Claim.DUPLICATE:
            _DUPLICATES(source_id).inc()
            return Answer(200, {"event_id": claim.event_id, "duplicate": True}), "duplicate"
        if claim.claim is Claim.IN_FLIGHT:
            raise Rejection(
                409,
                "delivery_in_flight",
                f"delivery {delivery.dedup_key!r} is being accepted by another request; "
                "retry shortly",
                headers={"Retry-After": "1"},
            )
        if claim.claim is Claim.UNCHECKED:
            INGEST_DEDUP_UNAVAILABLE.inc()
        try:
            await self._publisher.publish(delivery.events, content_type)
        except BrokerUnavailable as error:
            if claim.claim is Claim.NEW:
                await self._receipts.release(source_id, delivery.dedup_key)
            log.warning(
                "broker unavailable; answered 503",
                extra={"event_id": delivery.delivery_id, "source": source_id, "error": str(error)},
            )
            raise Rejection(
                503,
                "broker_unavailable",
                f"event not accepted: {error}; retry later",
                headers={"Retry-After": str(self._settings.retry_after_s)},
            ) from None
        self._receipts.accept(source_id, delivery.dedup_key, delivery.delivery_id)
        _EVENTS(source_id).inc(len(delivery.events))
        _LAST_ACCEPTED(source_id).set(time.time())
        body = {
            "event_id": delivery.delivery_id,
            "records": len(delivery.events),
            "duplicate": False,
        }
        return Answer(202, body), "accepted"

    def _observe(
        self,
        request: IncomingRequest,
        trace: _Trace,
        answer: Answer,
        outcome: str,
        reason: str | None,
        tables: list[str],
    ) -> None:
        latency = time.perf_counter() - trace.started
        label = trace.source.config.id if trace.source else "unknown"
        _REQUESTS(label, str(answer.status_code), outcome).inc()
        _LATENCY(label).observe(latency)
        _BODY_BYTES(label).observe(trace.size)
        delivery = trace.delivery
        self._history.record(
            HistoryEntry(
                received_at=trace.received_at,
                source_id=request.source_id,
                outcome=outcome,
                status_code=answer.status_code,
                response_body=answer.body,
                latency_ms=latency * 1000,
                size_bytes=trace.size,
                tables=tables,
                event_id=delivery.delivery_id if delivery else None,
                source_event_id=delivery.source_event_id if delivery else None,
                reason=reason,
                client_ip=trace.client_ip or request.peer,
                content_type=request.headers.get("content-type"),
                body=trace.body,
                warnings=trace.warnings,
            )
        )
        if answer.status_code >= 400:
            log.info(
                "webhook rejected",
                extra={"source": label, "status": answer.status_code, "reason": reason},
            )
