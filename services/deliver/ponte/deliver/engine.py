"""Delivering one batch of change events to every target that wants them.

For each target: keep the newest change per record, drop what was already delivered in
that version or a newer one (so replays are no-ops), send the rest in chunks of the API's
batch size, at most ``concurrency`` calls at once, each call through the target's token
bucket. A call that fails in a way that may pass (429, 5xx, timeout, connection) is
retried with exponential backoff and jitter, never sooner than the server's Retry-After;
after ``deliver_max_attempts`` or ``deliver_max_age_s`` its records go to the dead-letter
topic, as do records the CRM refuses (4xx, or a 207 error for that record) at once.
Every outcome is recorded in ``deliveries`` (state, the CRM's id, version, attempts,
reason).

Then, for targets that declare ``associations``, the links (``ponte.deliver.associations``):
only after the upserts succeeded and their CRM ids are recorded, because a link needs
both records' ids. The order is fixed: record deliveries, record the links the delivered
rows declare, then send every link touching a delivered row whose two records now both
have ids (so a deal that arrived before its company is linked in the step that delivers
the company). Link calls go through the same token bucket, concurrency limit and retry
discipline; a link that still fails is kept visible as ``failed`` with its reason in the
``associations`` table, not dead-lettered. The caller commits offsets only after
``deliver`` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from ponte.deliver import associations, references
from ponte.deliver.associations import Link, LinkFailure
from ponte.deliver.changes import Change, event_body, latest_per_record, properties_for
from ponte.deliver.connectors.base import BatchOutcome, Connector, Outgoing, PairsRefused
from ponte.deliver.expressions import PropertyRefused
from ponte.deliver.targets import Target
from ponte.shared.http_policy import RetryableError, TerminalError, tenacity_wait
from ponte.shared.settings import Settings
from ponte.shared.versions import version_key, version_order

log = logging.getLogger(__name__)


@dataclass
class Failure:
    change: Change
    reason: str
    status: int | None = None
    excerpt: str = ""
    attempts: int = 1
    first_attempt: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_attempt: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class TargetResult:
    delivered: list[tuple[Change, str | None]] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    skipped: int = 0
    skipped_changes: list[Change] = field(default_factory=list)
    waiting: list[tuple[Change, references.Missing]] = field(default_factory=list)
    """Changes whose referenced record has no CRM id in this target yet."""
    keys: dict[str, str] = field(default_factory=dict)
    """external id -> the natural-key value the connector wrote (``deliveries.crm_key``)."""
    linked: int = 0
    """Associations made in this step."""
    link_failures: list[LinkFailure] = field(default_factory=list)


@dataclass
class _Item:
    """One change to send: the CRM id and natural key known for its record, and the
    properties of its references (the referenced records' CRM ids)."""

    change: Change
    crm_id: str | None
    crm_key: str | None = None
    references: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    """The record's own properties (``ObjectMapping.values_for``), computed before sending
    so a property that cannot be computed refuses just this record."""


def _with_properties(target: Target, items: list[_Item], result: TargetResult) -> list[_Item]:
    """Upserts with their properties computed; one whose property expression refuses the
    row (a required value missing, a phone that is no number: ``ponte.deliver.expressions``)
    is refused, terminally: the same row fails the same way on every retry, so it goes to
    the dead letters with the property and the reason, and is never sent."""
    ready = []
    for item in items:
        if item.change.operation == "delete":
            ready.append(item)
            continue
        try:
            item.properties = properties_for(target, item.change)
        except PropertyRefused as error:
            where = f"objects.{item.change.entity}"
            result.failed.append(Failure(item.change, f"refused: {where}.{error}"))
            continue
        ready.append(item)
    return ready


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        connectors: dict[str, tuple[Target, Connector]],
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._producer = producer
        self._connectors = connectors
        self._limits = {
            target_id: asyncio.Semaphore(target.concurrency)
            for target_id, (target, _) in connectors.items()
        }

    async def deliver(self, changes: list[Change]) -> dict[str, TargetResult]:
        results = await asyncio.gather(
            *(
                self._deliver_target(target, connector, changes)
                for target, connector in self._connectors.values()
            )
        )
        return dict(zip(self._connectors, results, strict=True))

    async def _deliver_target(
        self, target: Target, connector: Connector, changes: list[Change]
    ) -> TargetResult:
        """Deliver, dead-letter and record; park what waits for a parent; hand back what
        waited and can go now; then link.

        The order matters for ``ponte.deliver.references``: deliveries are recorded, then
        the changes that wait are parked, then waiting ones whose record now has a CRM id
        are released, each committed before the next. A released change is produced back
        onto the changes topic under its record's key, so it reaches the consumer that
        owns that record's partition, after any newer version of it: one record's changes
        stay with one consumer, in order, and a newer delivered version makes it a skip."""
        result = await self._deliver_to(target, connector, changes)
        await self._dead_letter(target.id, result)
        await self._record(target.id, result)
        if any(mapping.references for mapping in target.objects.values()):
            await references.park(self._pool, target, result.waiting)
            settled = [change for change, _ in result.delivered]
            settled += [failure.change for failure in result.failed] + result.skipped_changes
            await references.settle(self._pool, target, settled)
            await self._hand_back(target)
        if associations.links_anything(target):
            await self._associate(target, connector, result)
        return result

    async def _hand_back(self, target: Target) -> None:
        """Waiting changes whose parent has a CRM id now, back onto their partition
        (acknowledged), then out of ``waiting_deliveries``. A crash in between leaves the
        claim to be retaken later: the change is then produced twice, and the second copy
        is a skip (its version is delivered)."""
        released = await references.release(self._pool, target)
        if not released:
            return
        sends = [
            await self._producer.send(
                self._settings.changes_topic,
                value=orjson.dumps(event_body(change)),
                key=f"{change.entity}/{change.source_id}/{change.source_key}".encode(),
                headers=[("ponte-released-for", target.id.encode())],
            )
            for change in released
        ]
        await asyncio.gather(*sends)
        await references.settle(self._pool, target, released, released=True)

    def _retrying(self) -> AsyncRetrying:
        """Retry what may pass (``RetryableError``) until the attempts or the age run out."""
        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self._settings.deliver_max_attempts)
            | stop_after_delay(self._settings.deliver_max_age_s),
            wait=tenacity_wait,
            reraise=True,
        )

    async def _deliver_to(
        self, target: Target, connector: Connector, changes: list[Change]
    ) -> TargetResult:
        wanted = latest_per_record(target, changes)
        known = await self._known(target, wanted)
        result = TargetResult()
        superseded: set[tuple[str, str, str]] = set()
        if any(target.objects[change.entity].references for change in wanted):
            superseded = await references.newer_waiting(self._pool, target, wanted)
        items: list[_Item] = []
        for change in wanted:
            record = (change.entity, change.source_id, change.source_key)
            state = known.get(record)
            if record in superseded or (
                state is not None
                and state["state"] == "delivered"
                and _stored_version(state) >= change.version_key()
            ):
                result.skipped += 1
                result.skipped_changes.append(change)
                continue
            crm_id = state["crm_id"] if state is not None else None
            if change.operation == "delete" and crm_id is None:
                result.delivered.append((change, None))  # never reached the CRM
                continue
            items.append(_Item(change, crm_id, state["crm_key"] if state is not None else None))
        items = await self._with_references(target, items, result)
        items = _with_properties(target, items, result)
        chunks: dict[tuple[str, str], list[_Item]] = defaultdict(list)
        for item in items:
            chunks[(item.change.entity, item.change.operation)].append(item)
        calls = [
            self._send(target, connector, entity, operation, batch[i : i + target.batch_size])
            for (entity, operation), batch in chunks.items()
            for i in range(0, len(batch), target.batch_size)
        ]
        for delivered, failed, keys in await asyncio.gather(*calls):
            result.delivered += delivered
            result.failed += failed
            result.keys.update(keys)
        return result

    async def _with_references(
        self, target: Target, items: list[_Item], result: TargetResult
    ) -> list[_Item]:
        """The items whose references resolve, with the referenced records' CRM ids; the
        others wait (``result.waiting``) or, unusable, are refused (``result.failed``)."""
        referring = [item for item in items if target.objects[item.change.entity].references]
        if not referring:
            return items
        resolved = await references.resolve(self._pool, target, [item.change for item in referring])
        result.waiting += resolved.missing
        result.failed += [
            Failure(change, f"refused: {reason}") for change, reason in resolved.unusable
        ]
        ready = []
        for item in items:
            if not target.objects[item.change.entity].references:
                ready.append(item)
            elif item.change.external_id in resolved.properties:
                item.references = resolved.properties[item.change.external_id]
                ready.append(item)
        return ready

    async def _send(
        self,
        target: Target,
        connector: Connector,
        entity: str,
        operation: str,
        items: list[_Item],
    ) -> tuple[list[tuple[Change, str | None]], list[Failure], dict[str, str]]:
        object_type = target.objects[entity].object_type
        first = datetime.now(UTC)
        attempts = 0

        async def call() -> BatchOutcome:
            nonlocal attempts
            attempts += 1
            async with self._limits[target.id]:
                if operation == "delete":
                    await connector.delete_batch(
                        object_type, [item.crm_id for item in items if item.crm_id]
                    )
                    return BatchOutcome(
                        delivered={item.change.external_id: item.crm_id or "" for item in items}
                    )
                return await connector.upsert_batch(
                    object_type,
                    [
                        Outgoing(
                            item.change.external_id,
                            {**item.properties, **item.references},
                            item.crm_id,
                            item.crm_key,
                        )
                        for item in items
                    ],
                )

        try:
            async for attempt in self._retrying():
                with attempt:
                    outcome = await call()
        except (RetryableError, TerminalError) as error:
            kind = "gave up after retries" if isinstance(error, RetryableError) else "refused"
            log.warning(
                "delivery failed",
                extra={
                    "target": target.id,
                    "entity": entity,
                    "records": len(items),
                    "status": error.status,
                    "attempts": attempts,
                },
            )
            now = datetime.now(UTC)
            return [], [
                Failure(
                    item.change, f"{kind}: {error}", error.status, error.excerpt, attempts,
                    first, now,
                )
                for item in items
            ], {}  # fmt: skip
        delivered: list[tuple[Change, str | None]] = [
            (item.change, outcome.delivered[item.change.external_id])
            for item in items
            if item.change.external_id in outcome.delivered
        ]
        failed = [
            Failure(
                item.change,
                f"refused: {outcome.failed[item.change.external_id]}",
                207,
                outcome.failed[item.change.external_id],
                attempts,
                first,
            )
            for item in items
            if item.change.external_id in outcome.failed
        ]
        return delivered, failed, outcome.keys

    async def _associate(self, target: Target, connector: Connector, result: TargetResult) -> None:
        """Link what this step delivered, and what was waiting for it (see the module)."""
        delivered = [change for change, _ in result.delivered]
        if not delivered:
            return
        await associations.note_references(self._pool, target, delivered)
        due = await associations.due_links(self._pool, target, delivered)
        calls = [
            self._link(target, connector, from_type, to_type, links)
            for from_type, to_type, links in associations.calls_for(target, due)
        ]
        linked: list[tuple[Link, int]] = []
        for made, failed in await asyncio.gather(*calls):
            linked += made
            result.link_failures += failed
        result.linked = len(linked)
        await associations.record_outcomes(self._pool, target.id, linked, result.link_failures)

    async def _link(
        self, target: Target, connector: Connector, from_type: str, to_type: str, links: list[Link]
    ) -> tuple[list[tuple[Link, int]], list[LinkFailure]]:
        attempts = 0
        try:
            async for attempt in self._retrying():
                with attempt:
                    attempts += 1
                    async with self._limits[target.id]:
                        await connector.associate(from_type, to_type, [x.pair for x in links])
        except PairsRefused as error:
            log.warning(
                "associations refused",
                extra={"target": target.id, "from": from_type, "to": to_type,
                       "refused": len(error.refused)},
            )  # fmt: skip
            made = [(x, attempts) for x in links if x.pair not in error.refused]
            return made, [
                LinkFailure(x, f"refused: {error.refused[x.pair]}", error.status, attempts)
                for x in links
                if x.pair in error.refused
            ]
        except (RetryableError, TerminalError) as error:
            kind = "gave up after retries" if isinstance(error, RetryableError) else "refused"
            log.warning(
                "associations failed",
                extra={"target": target.id, "from": from_type, "to": to_type,
                       "links": len(links), "status": error.status, "attempts": attempts},
            )  # fmt: skip
            reason = f"{kind}: {error} {error.excerpt}".strip()
            return [], [LinkFailure(x, reason, error.status, attempts) for x in links]
        return [(x, attempts) for x in links], []

    async def _known(
        self, target: Target, changes: list[Change]
    ) -> dict[tuple[str, str, str], asyncpg.Record]:
        if not changes:
            return {}
        rows = await self._pool.fetch(
            "SELECT * FROM deliveries WHERE target_id = $1 AND (entity, source_id, source_key) "
            "IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))",
            target.id,
            [c.entity for c in changes],
            [c.source_id for c in changes],
            [c.source_key for c in changes],
        )
        return {(r["entity"], r["source_id"], r["source_key"]): r for r in rows}

    async def _dead_letter(self, target_id: str, result: TargetResult) -> None:
        """Failed records to the dead-letter topic, acknowledged before offsets move."""
        sends = []
        for failure in result.failed:
            change = failure.change
            value = orjson.dumps(
                {
                    "target": target_id,
                    "change": event_body(change),
                }
            )
            headers = {
                "ponte-target": target_id,
                "ponte-dlq-reason": failure.reason[:500],
                "ponte-dlq-status": str(failure.status or ""),
                "ponte-dlq-response": failure.excerpt[:500],
                "ponte-dlq-attempts": str(failure.attempts),
                "ponte-dlq-first-attempt": failure.first_attempt.isoformat(),
                "ponte-dlq-last-attempt": failure.last_attempt.isoformat(),
                "ponte-original-topic": change.topic,
                "ponte-original-partition": str(change.partition),
                "ponte-original-offset": str(change.offset),
                "ponte-entity": change.entity,
                "ponte-source": change.source_id,
            }
            sends.append(
                await self._producer.send(
                    self._settings.deliver_dead_letter_topic,
                    value=value,
                    key=change.external_id.encode(),
                    headers=[(k, v.encode()) for k, v in headers.items()],
                )
            )
        if sends:
            await asyncio.gather(*sends)

    async def _record(self, target_id: str, result: TargetResult) -> None:
        """Every outcome in ``deliveries``: delivered (with the CRM id and the natural key
        written), failed (with the reason) or waiting (with what for)."""
        now = datetime.now(UTC)

        def row(
            change: Change, crm_id: str | None, state: str, attempts: int, reason: str | None
        ) -> tuple[Any, ...]:
            return (
                target_id, change.entity, change.source_id, change.source_key, change.row_id,
                crm_id, state, change.version_at, change.version_event_id, attempts, reason,
                now, result.keys.get(change.external_id) if state == "delivered" else None,
                change.version_seq,
            )  # fmt: skip

        rows = [row(change, crm_id, "delivered", 1, None) for change, crm_id in result.delivered]
        rows += [
            row(failure.change, None, "failed", failure.attempts, failure.reason)
            for failure in result.failed
        ]
        rows += [
            row(change, None, "waiting", 0, why.reason(target_id)) for change, why in result.waiting
        ]
        if not rows:
            return
        # A failure or a wait never erases the CRM id, its key or the version delivered.
        await self._pool.executemany(
            "INSERT INTO deliveries AS d (target_id, entity, source_id, source_key, row_id, "  # noqa: S608 - the order is a constant
            "crm_id, state, version_at, version_event_id, attempts, last_error, updated_at, "
            "crm_key, version_seq) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
            "ON CONFLICT (target_id, entity, source_id, source_key) DO UPDATE SET "
            "row_id = EXCLUDED.row_id, crm_id = COALESCE(EXCLUDED.crm_id, d.crm_id), "
            "crm_key = COALESCE(EXCLUDED.crm_key, d.crm_key), "
            "state = EXCLUDED.state, attempts = EXCLUDED.attempts, "
            "last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at, "
            "version_at = CASE WHEN EXCLUDED.state = 'delivered' THEN EXCLUDED.version_at "
            "ELSE d.version_at END, "
            "version_event_id = CASE WHEN EXCLUDED.state = 'delivered' "
            "THEN EXCLUDED.version_event_id ELSE d.version_event_id END, "
            "version_seq = CASE WHEN EXCLUDED.state = 'delivered' "
            "THEN EXCLUDED.version_seq ELSE d.version_seq END "
            # Never back in time: an older version recorded after a newer one (two
            # writers of one record) leaves the newer one's row as it is.
            "WHERE NOT (EXCLUDED.state = 'delivered' AND d.state = 'delivered' AND "
            f"{version_order('EXCLUDED')} < {version_order('d')})",
            rows,
        )


def _stored_version(row: asyncpg.Record) -> tuple[float, int, str]:
    return version_key(row["version_at"], row["version_seq"], row["version_event_id"])
