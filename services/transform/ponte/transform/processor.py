"""One batch of raw-topic messages, applied in one transaction, poison isolated.

``BatchProcessor.process`` decodes every message, applies all the records in a single
transaction together with their change events, dead letters, rejection rows and unmapped
report (so either all of that is committed or none of it), and returns. The consumer
commits offsets only after it returns.

When the transaction fails on the *data* (a constraint, a value PostgreSQL refuses, a bug
triggered by one payload), the batch is split in halves and each half retried, down to the
single message, which then goes to the dead-letter topic with the error: one poison
message costs a few extra transactions and never blocks the partition. When it fails on
the *database being unavailable*, nothing is split or dead-lettered: the error goes up and
the consumer retries the same batch once PostgreSQL is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ponte.shared import db
from ponte.shared.db import DbConnection
from ponte.shared.metrics import (
    TRANSFORM_BATCH_SECONDS,
    TRANSFORM_CHANGES,
    TRANSFORM_EVENTS,
    TRANSFORM_LAST_APPLIED,
    TRANSFORM_PARKED_EXPIRED,
    TRANSFORM_REJECTIONS,
    TRANSFORM_ROWS_SKIPPED,
    TRANSFORM_UNMAPPED,
)
from ponte.shared.settings import Settings
from ponte.transform.decode import Decoded, Decoder
from ponte.transform.identity import Identity, RawMessage, identity_of, raw_pointer, storable
from ponte.transform.normalize import RecordRejected
from ponte.transform.outbox import OutboxEntry, Outgoing, add_messages
from ponte.transform.repository.applier import BatchApplier
from ponte.transform.repository.changes import ChangeEvent
from ponte.transform.repository.parking import expire_parked

log = logging.getLogger(__name__)

UNAVAILABLE = db.UNAVAILABLE


Message = RawMessage
"""The parts of a Kafka record the processor reads (aiokafka's ConsumerRecord)."""


@dataclass
class _Item:
    message: Message
    decoded: Decoded
    identity: Identity = field(init=False)
    """Fixed when the message is decoded, so a dead letter that must drop the event
    (``_reject_alone``) still names its source, event, table and record."""

    def __post_init__(self) -> None:
        self.identity = identity_of(self.message, self.decoded.event)

    @property
    def event_id(self) -> str:
        return self.identity.event_id


@dataclass
class BatchSummary:
    records: int = 0
    """Records decoded in committed transactions: applied, stale, or superseded by a
    newer one in the same batch."""
    applied: int = 0
    stale: int = 0
    rejected: int = 0
    skipped: int = 0
    """Rows (root or child) skip rules left out, in committed transactions."""
    changes: int = 0
    splits: int = 0
    rejected_codes: list[str] = field(default_factory=list)
    outbox: list[Outgoing] = field(default_factory=list)
    """The outbox messages the batch's committed transactions wrote, in id order, for
    the relay to publish from memory (``OutboxRelay.publish_committed``)."""


class BatchProcessor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        decoder: Decoder | None = None,
        *,
        reprocess: bool = False,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._decoder = decoder or Decoder(settings.mappings_dir)
        self._reprocess = reprocess
        """Every record flagged ``reprocess`` (``ponte reprocess``): an equal version
        rewrites a row another mapping wrote (``ponte.shared.versions.applies``)."""
        self.on_commit: list[Callable[[Sequence[str]], None]] = []
        """Called after each committed batch with the entities it changed (the
        classification re-runs when orders or invoices change)."""

    async def process(self, messages: list[Message]) -> BatchSummary:
        started = time.perf_counter()
        items = [
            _Item(message, self._decoder.decode(message.value, message.offset))
            for message in messages
        ]
        if self._reprocess:
            for item in items:
                for record in item.decoded.records:
                    record.reprocess = True
        summary = BatchSummary()
        await self._apply_splitting(items, summary)
        TRANSFORM_BATCH_SECONDS.observe(time.perf_counter() - started)
        return summary

    async def sweep_parked(self) -> int:
        """Resolve every parked reference whose target now exists (written by another
        replica, or before this process started), then dead-letter those that waited too
        long; returns how many were resolved."""
        async with self._pool.acquire() as connection, connection.transaction():
            result = await BatchApplier(connection).sweep_parked()
            await self.queue_changes(connection, result.changes)
            expired = await self._expire_parked(connection)
        for row in expired:  # counted once committed
            TRANSFORM_PARKED_EXPIRED.labels(row["source_id"]).inc()
        if expired:
            log.warning("parked references expired", extra={"count": len(expired)})
        return result.resolved

    async def _expire_parked(self, connection: DbConnection) -> list[dict[str, Any]]:
        """A reference whose target was refused or never sent would wait forever: after
        ``parked_reference_expiry_s`` it becomes a dead letter naming the row, the
        reference and why it waited (the row stays stored, the column NULL; sending the
        target and then the row again completes it)."""
        expiry = self._settings.parked_reference_expiry_s
        if expiry <= 0:
            return []
        now = datetime.now(UTC)
        expired = await expire_parked(connection, now - timedelta(seconds=expiry))
        await add_messages(connection, [self._expired_letter(row, now) for row in expired])
        return expired

    def _expired_letter(self, row: dict[str, Any], now: datetime) -> OutboxEntry:
        age_days = (now - row["parked_at"]).total_seconds() / 86400
        target = row["target_source"] or row["source_id"]
        how = f"{row['target_field']} " if row["target_field"] else ""
        reason = storable(
            f"{row['entity']} {row['source_key']!r} waited {age_days:.1f} days for "
            f"{row['target_entity']} {how}{row['target_key']!r} of source {target!r} "
            f"({row['field']} -> {row['column_name']}): {row['reason'] or 'never arrived'}",
            1000,
        )
        value: dict[str, Any] = {
            "event": None,
            "identity": {
                "event_id": row["event_id"],
                "source_id": row["source_id"],
                "source_kind": None,
                "table": row["entity"],
                "record_key": row["source_key"],
            },
            "raw": None,
            "error": {"code": "reference_expired", "reason": reason, "field": row["field"]},
            "reference": {
                "entity": row["entity"],
                "row_id": row["row_id"],
                "column": row["column_name"],
                "target_entity": row["target_entity"],
                "target_source": target,
                "target_field": row["target_field"],
                "target_key": row["target_key"],
                "parked_at": row["parked_at"].isoformat(),
            },
        }
        headers = {
            "ponte-dlq-code": "reference_expired",
            "ponte-dlq-reason": storable(reason),
            "ponte-dlq-field": storable(row["field"]),
            "ponte-event-id": row["event_id"],
            "ponte-source": row["source_id"],
            "ponte-table": row["entity"],
            "ponte-record-key": storable(row["source_key"] or ""),
            "ponte-failed-at": now.isoformat(),
        }
        key = f"{row['source_id']}/{row['entity']}/{row['source_key']}"
        return self._settings.transform_dead_letter_topic, key, value, headers

    async def queue_changes(self, connection: DbConnection, changes: list[ChangeEvent]) -> None:
        """Change events into the outbox, inside the caller's transaction."""
        await add_messages(connection, [self.change_message(c) for c in changes])

    async def _apply_splitting(
        self, items: list[_Item], summary: BatchSummary, races_left: int = 3
    ) -> None:
        try:
            await self._apply(items, summary)
        except UNAVAILABLE:
            raise
        except (asyncpg.UniqueViolationError, asyncpg.TransactionRollbackError):
            if races_left == 0:
                raise
            # Another replica inserted the same new row meanwhile (a rebalance, one
            # record reaching two partitions, a reprocess beside the live transform): the
            # retry finds it and updates it instead. A deadlock or serialization failure
            # with such a writer (TransactionRollbackError) is the same race: retried
            # whole, never split and dead-lettered as if the data were at fault.
            await asyncio.sleep(0.05)
            await self._apply_splitting(items, summary, races_left - 1)
        except Exception as error:  # the data (or a bug one payload triggers): isolate it
            if len(items) == 1:
                await self._reject_alone(items[0], error, summary)
                return
            summary.splits += 1
            middle = len(items) // 2
            await self._apply_splitting(items[:middle], summary)
            await self._apply_splitting(items[middle:], summary)

    async def _reject_alone(self, item: _Item, error: Exception, summary: BatchSummary) -> None:
        """The message the database refuses goes to the dead-letter topic; if even that
        fails on its payload, it goes without the payload, never blocking the partition."""
        log.warning(
            "record rejected by the database",
            extra={"event_id": item.event_id, "error": type(error).__name__},
        )
        item.decoded.records = []
        item.decoded.unmapped = set()
        item.decoded.skipped = []  # dead-lettered whole: its skips are not counted either
        item.decoded.rejection = RecordRejected(
            "database_error", storable(f"{type(error).__name__}: {error}", 1000)
        )
        try:
            await self._apply([item], summary)
        except UNAVAILABLE:
            raise
        except Exception:
            log.exception(
                "dead letter with payload refused; sending it without the payload",
                extra={"event_id": item.event_id},
            )
            item.decoded.event = None
            await self._apply([item], summary)

    async def _apply(self, items: list[_Item], summary: BatchSummary) -> None:
        now = datetime.now(UTC)
        records = [
            record
            for item in items
            if item.decoded.rejection is None
            for record in item.decoded.records
        ]
        rejected = [item for item in items if item.decoded.rejection is not None]
        async with self._pool.acquire() as connection, connection.transaction():
            result = await BatchApplier(connection, now).apply(records)
            messages = [self.change_message(change) for change in result.changes]
            messages += [self._dead_letter(item, now) for item in rejected]
            written = await add_messages(connection, messages)
            await _record_rejections(connection, rejected, now)
            await _record_unmapped(connection, items, now)
            await _record_skipped(connection, items, now)
        # Counted (and handed to the relay) only once committed.
        summary.outbox += written
        summary.records += len(records)
        summary.applied += result.applied_records
        summary.stale += result.stale_records
        summary.rejected += len(rejected)
        summary.skipped += sum(len(i.decoded.skipped) for i in items if i.decoded.rejection is None)
        summary.changes += len(result.changes)
        for change in result.changes:
            TRANSFORM_CHANGES.labels(change.entity).inc()
        if result.changes:
            entities = sorted({change.entity for change in result.changes})
            for listener in self.on_commit:
                listener(entities)
        for item in items:
            source = item.identity.source_id
            if item.decoded.rejection is not None:
                summary.rejected_codes.append(item.decoded.rejection.code)
                TRANSFORM_REJECTIONS.labels(source, item.decoded.rejection.code).inc()
                TRANSFORM_EVENTS.labels(source, "rejected").inc()
            elif not item.decoded.records and item.decoded.skipped:
                TRANSFORM_EVENTS.labels(source, "skipped").inc()
            else:
                TRANSFORM_EVENTS.labels(source, "applied").inc()
                TRANSFORM_LAST_APPLIED.labels(source).set(time.time())
            if item.decoded.unmapped:
                TRANSFORM_UNMAPPED.labels(source).inc(len(item.decoded.unmapped))
            for skipped in item.decoded.skipped:
                TRANSFORM_ROWS_SKIPPED.labels(source, skipped.table, skipped.rule).inc()

    def change_message(
        self, change: ChangeEvent
    ) -> tuple[str, str, dict[str, Any], dict[str, str]]:
        value = {
            "entity": change.entity,
            "source_id": change.source_id,
            "source_key": change.source_key,
            "row_id": change.row_id,
            "operation": change.operation,
            "changed": change.changed,
            "version": None
            if change.version is None
            else {
                "at": change.version.at.isoformat() if change.version.at else None,
                # Absent (or null) in events published before the sequence existed;
                # deliver reads either as no sequence (normalize.NO_SEQUENCE).
                "seq": change.version.seq,
                "event_id": change.version.event_id,
            },
            "row": change.row,
        }
        headers = {
            "ponte-entity": change.entity,
            "ponte-source": change.source_id,
            "ponte-operation": change.operation,
        }
        return self._settings.changes_topic, change.key, value, headers

    def _dead_letter(
        self, item: _Item, now: datetime
    ) -> tuple[str, str, dict[str, Any], dict[str, str]]:
        rejection = item.decoded.rejection
        assert rejection is not None
        event = item.decoded.event
        message = item.message
        identity = item.identity
        # Without a readable event, its identity (from the headers, key or leading
        # bytes) and the bytes themselves: base64, cut with a pointer to the offset.
        value: dict[str, Any] = {
            "event": event.model_dump(mode="json") if event else None,
            "identity": {
                "event_id": identity.event_id,
                "source_id": identity.source_id,
                "source_kind": identity.source_kind,
                "table": identity.table,
                "record_key": identity.record_key,
            },
            "raw": None if event else raw_pointer(message),
            "error": {"code": rejection.code, "reason": rejection.reason, "field": rejection.field},
        }
        headers = {
            "ponte-dlq-code": rejection.code,
            "ponte-dlq-reason": storable(rejection.reason),
            "ponte-dlq-field": storable(rejection.field or ""),
            "ponte-event-id": identity.event_id,
            "ponte-source": identity.source_id,
            "ponte-table": identity.table,
            "ponte-record-key": identity.record_key,
            "ponte-original-topic": message.topic,
            "ponte-original-partition": str(message.partition),
            "ponte-original-offset": str(message.offset),
            "ponte-failed-at": now.isoformat(),
        }
        key = (message.key or item.event_id.encode()).decode("utf-8", "replace")
        return self._settings.transform_dead_letter_topic, key, value, headers


async def _record_rejections(
    connection: DbConnection, rejected: list[_Item], now: datetime
) -> None:
    if not rejected:
        return
    rows = []
    for item in rejected:
        rejection, event, identity = item.decoded.rejection, item.decoded.event, item.identity
        assert rejection is not None
        rows.append(
            (
                identity.event_id,
                identity.source_id,
                identity.table,
                identity.record_key,
                None if rejection.field is None else storable(rejection.field),
                storable(f"{rejection.code}: {rejection.reason}", 1000),
                now,
                event.payload if event else {},
                None if event else raw_pointer(item.message),
            )
        )
    await connection.executemany(
        "INSERT INTO transform_rejections (event_id, source_id, source_table, record_key, "
        "field, reason, rejected_at, payload, raw) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (event_id) DO UPDATE SET field = EXCLUDED.field, "
        "reason = EXCLUDED.reason, rejected_at = EXCLUDED.rejected_at, "
        "payload = EXCLUDED.payload, raw = EXCLUDED.raw",
        rows,
    )


async def _record_unmapped(connection: DbConnection, items: list[_Item], now: datetime) -> None:
    counts: dict[tuple[str, str, str], tuple[int, str]] = {}
    for item in items:
        event = item.decoded.event
        if event is None:
            continue
        for table, name in item.decoded.unmapped:
            key = (event.source_id, table, name)
            seen, _ = counts.get(key, (0, event.event_id))
            counts[key] = (seen + 1, event.event_id)
    if not counts:
        return
    await connection.executemany(
        "INSERT INTO unmapped_fields (source_id, source_table, field, occurrences, first_seen, "
        "last_seen, example_event_id) VALUES ($1, $2, $3, $4, $5, $5, $6) "
        "ON CONFLICT (source_id, source_table, field) DO UPDATE SET "
        "occurrences = unmapped_fields.occurrences + EXCLUDED.occurrences, "
        "last_seen = EXCLUDED.last_seen, example_event_id = EXCLUDED.example_event_id",
        [(*key, count, now, event_id) for key, (count, event_id) in sorted(counts.items())],
    )


async def _record_skipped(connection: DbConnection, items: list[_Item], now: datetime) -> None:
    """Per (source, table, rule), how many rows skip rules left out: in the batch's own
    transaction, so a skip is recorded exactly when the rest of the batch is."""
    counts: dict[tuple[str, str, str], tuple[int, str | None, str]] = {}
    for item in items:
        event = item.decoded.event
        if event is None or item.decoded.rejection is not None:
            continue
        for skipped in item.decoded.skipped:
            key = (event.source_id, skipped.table, skipped.rule)
            seen = counts.get(key, (0, None, ""))[0]
            counts[key] = (seen + 1, skipped.reason, event.event_id)
    if not counts:
        return
    await connection.executemany(
        "INSERT INTO skipped_rows (source_id, source_table, rule, reason, occurrences, "
        "first_seen, last_seen, example_event_id) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) "
        "ON CONFLICT (source_id, source_table, rule) DO UPDATE SET "
        "occurrences = skipped_rows.occurrences + EXCLUDED.occurrences, "
        "reason = EXCLUDED.reason, last_seen = EXCLUDED.last_seen, "
        "example_event_id = EXCLUDED.example_event_id",
        [
            (*key, reason, count, now, event_id)
            for key, (count, reason, event_id) in sorted(counts.items())
        ],
    )
