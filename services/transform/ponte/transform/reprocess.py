"""``ponte reprocess``: the current mapping re-applied to the raw events already received.

After a mapping is fixed, the events stored under the old one keep their rows: rewinding
the live group would change nothing, because every stored version is "the same" as the
event's. A reprocess reads the raw topic with a consumer of its own (no group: it commits
nothing and never moves the live transform's offsets), from the beginning or from the
offsets of ``--since`` (``offsets_for_times``, the time ingest published each message) to
the end offsets taken when it starts, keeps the source's (and table's) events, and hands
them to the live path itself, ``BatchProcessor``, with every record flagged ``reprocess``:
the same decoder, repository, transactions, outbox, dead letters and rejections. The only
difference is the version rule (``ponte.shared.versions.applies``): an event of an *equal*
version rewrites a row whose ``mapping_digest`` differs. So:

- nothing is duplicated (rows are found by their natural key, as live);
- deletes stay deleted (the upsert before a delete is older than the tombstone and loses;
  the delete itself rewrites the tombstone, which stays a tombstone);
- only rows whose content changes emit change events (``changes.changed_columns``; the
  digest is bookkeeping), so a second reprocess changes nothing;
- a newer live event, before or during the reprocess, still wins: the reprocessed one is
  older and loses. Live traffic goes on: both write through ``fetch_existing``'s row locks,
  taken in key order, and a new row inserted by both at once is a unique-key race the
  processor retries (``BatchProcessor._apply_splitting``).

Run it once the fixed mapping is deployed to the transform: a live replica still on the
old mapping would write newer events under it (by version, correctly, but with the old
reading).

**Not built: beyond the raw topic's retention.** The ingest's request history
(``webhook_requests``) does keep bodies (up to ``history_keep_body_bytes``, for
``history_retention_days``, 30 days against the raw topic's 7), but rebuilding events
from it is not done here: a rebuilt event has no raw topic offset, which is the sequence
its stored rows were versioned with, so it could not be told equal to them; and a shop's
topic and delivery-id headers are kept only in part. The report counts the source's
accepted requests older than the topic's oldest event, so nobody mistakes "reprocessed
everything" for the truth when some is out of reach.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from ponte.shared import db, kafka
from ponte.shared.metrics import REPROCESS_EVENTS, REPROCESS_PROGRESS
from ponte.shared.settings import Settings
from ponte.transform.decode import Decoder
from ponte.transform.identity import identity_of
from ponte.transform.outbox import OutboxRelay
from ponte.transform.processor import UNAVAILABLE, BatchProcessor, BatchSummary, Message

log = logging.getLogger(__name__)

IDLE_S = 3.0
"""How long nothing may arrive below the end offsets before reading stops anyway (a
broker that reports an end beyond its last message); reported as ``stopped_early``."""

HISTORY_MARGIN = timedelta(minutes=5)
"""A request is received a moment before its events are published; only requests older
than the topic's oldest message by more than this count as out of the topic's reach."""


class ReprocessRefused(ValueError):
    """The reprocess cannot start (no raw topic); the message says why."""


@dataclass(frozen=True)
class Selection:
    """Which raw events are re-applied: one source's, optionally one table's (the raw
    event's table, or a shop webhook's resource such as ``orders``), optionally only those
    published at or after ``since``."""

    source_id: str
    table: str | None = None
    since: datetime | None = None

    def wants(self, message: Message, timestamp_ms: int) -> bool:
        # ``offsets_for_times`` found where to start; the time is checked on each message
        # too, because a broker may answer it with the partition's start (Tansu does).
        if self.since is not None and timestamp_ms < self.since.timestamp() * 1000:
            return False
        identity = identity_of(message, None)
        if identity.source_id != self.source_id:
            return False
        if self.table is None:
            return True
        wanted = self.table.strip().casefold()
        table = identity.table.casefold()
        return wanted in (table, table.split("/", 1)[0])


@dataclass(frozen=True)
class Progress:
    """How far the read has come: messages of the raw topic read, of ``total``."""

    source_id: str
    done: int
    total: int
    elapsed_s: float

    @property
    def ratio(self) -> float:
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return None if self.rate == 0 else max(0, self.total - self.done) / self.rate

    def line(self) -> str:
        eta = "?" if self.eta_s is None else f"{self.eta_s:.0f}s"
        return (
            f"reprocess {self.source_id}: {self.done}/{self.total} messages "
            f"({self.ratio:.0%}), {self.rate:.0f}/s, ETA {eta}"
        )


@dataclass
class ReprocessReport:
    """What a reprocess read and did (a dry run: what it would re-apply)."""

    source_id: str
    dry_run: bool
    read: int = 0
    """Raw-topic messages read (every source's)."""
    selected: int = 0
    """Of those, the source's (and table's)."""
    applied: int = 0
    """Records written again (or, dry run, that the mapping reads)."""
    unchanged: int = 0
    """Records that changed nothing: written by this mapping already, or older than the
    stored row (a newer event won)."""
    changes: int = 0
    """Change events written (rows whose content changed)."""
    rejected: int = 0
    skipped: int = 0
    oldest_on_topic: datetime | None = None
    beyond_topic: int | None = None
    """Accepted requests of the source older than the topic's oldest message (None: not
    counted, with ``--since``): not reprocessed, see the module docstring."""
    stopped_early: bool = False
    by_table: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        verb = "would re-apply" if self.dry_run else "re-applied"
        lines = [
            f"read {self.read} message(s), {self.selected} of source {self.source_id}",
            f"{verb} {self.applied} record(s); {self.unchanged} unchanged; "
            f"{self.changes} row(s) changed; {self.rejected} rejected; "
            f"{self.skipped} row(s) skipped by filters",
        ]
        if self.dry_run:
            lines[1] = (
                f"{verb} {self.applied} record(s); {self.rejected} would be rejected; "
                f"{self.skipped} row(s) skipped by filters (nothing written)"
            )
        if self.stopped_early:
            lines.append(
                f"stopped after {IDLE_S:.0f}s without a message below the end offsets "
                "taken at the start; run it again if the broker was catching up"
            )
        if self.beyond_topic:
            oldest = self.oldest_on_topic.isoformat() if self.oldest_on_topic else "none"
            lines.append(
                f"NOT reprocessed: {self.beyond_topic} accepted request(s) of this source "
                f"are older than the raw topic's oldest message ({oldest}); rebuilding "
                "them from the request history is not built"
            )
        return "\n".join(lines)


async def reprocess(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 5.0,
) -> ReprocessReport:
    """Re-apply the current mapping to ``selection``'s raw events (see the module's
    docstring); ``on_progress`` every ``progress_every_s`` and once at the end."""
    report = ReprocessReport(selection.source_id, dry_run)
    pool = await db.create_pool(settings)
    try:
        consumer = await _start_consumer(settings)
        try:
            reader = _Reader(consumer, settings, selection, report)
            await reader.position()
            apply = _Applier(settings, pool, report, dry_run)
            await apply.start()
            try:
                await _run(reader, apply, selection, on_progress, progress_every_s)
            finally:
                await apply.stop()
        finally:
            await consumer.stop()
        if selection.since is None:
            report.beyond_topic = await _requests_beyond(pool, selection, report)
    finally:
        await pool.close()
    return report


async def _run(
    reader: _Reader,
    apply: _Applier,
    selection: Selection,
    on_progress: Callable[[Progress], None] | None,
    every_s: float,
) -> None:
    started = last = time.monotonic()
    while (batch := await reader.next_batch()) is not None:
        chosen = [m for m in batch if selection.wants(m, m.timestamp)]
        REPROCESS_EVENTS.labels(selection.source_id).inc(len(batch))
        reader.report.selected += len(chosen)
        if chosen:
            await apply(chosen)
        now = time.monotonic()
        progress = Progress(selection.source_id, reader.done, reader.total, now - started)
        REPROCESS_PROGRESS.labels(selection.source_id).set(progress.ratio)
        if on_progress is not None and now - last >= every_s:
            last = now
            on_progress(progress)
    done = Progress(selection.source_id, reader.done, reader.total, time.monotonic() - started)
    REPROCESS_PROGRESS.labels(selection.source_id).set(done.ratio)
    if on_progress is not None:
        on_progress(done)


async def _start_consumer(settings: Settings) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.kafka_client_id}-reprocess",
        group_id=None,  # commits nothing: the live transform's group is not touched
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    return consumer


class _Reader:
    """The raw topic from the start offsets to the end offsets taken at the start: what
    arrives later is live traffic, the live transform's to apply."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        settings: Settings,
        selection: Selection,
        report: ReprocessReport,
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.selection = selection
        self.report = report
        self.start: dict[TopicPartition, int] = {}
        self.end: dict[TopicPartition, int] = {}
        self.at: dict[TopicPartition, int] = {}

    @property
    def total(self) -> int:
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.end)

    @property
    def done(self) -> int:
        return sum(min(self.at[tp], self.end[tp]) - self.start[tp] for tp in self.end)

    async def position(self) -> None:
        topic = self.settings.raw_topic
        if topic not in await self.consumer.topics():
            raise ReprocessRefused(f"the raw topic {topic!r} does not exist (PONTE_RAW_TOPIC)")
        partitions = sorted(self.consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign(tps)
        beginning = await self.consumer.beginning_offsets(tps)
        self.end = await self.consumer.end_offsets(tps)
        self.start = dict(beginning)
        if self.selection.since is not None:
            at_ms = int(self.selection.since.timestamp() * 1000)
            found = await self.consumer.offsets_for_times(dict.fromkeys(tps, at_ms))
            for tp in tps:
                # None: nothing published at or after ``since`` in that partition.
                hit = found.get(tp)
                self.start[tp] = self.end[tp] if hit is None else max(hit.offset, beginning[tp])
        for tp in tps:
            self.at[tp] = self.start[tp]
            self.consumer.seek(tp, self.start[tp])

    async def next_batch(self) -> list[ConsumerRecord[bytes, bytes]] | None:
        """The next messages below the end offsets; None once every partition is read."""
        idle_since = time.monotonic()
        while any(self.at[tp] < self.end[tp] for tp in self.end):
            wanted = [tp for tp in self.end if self.at[tp] < self.end[tp]]
            batch = await self.consumer.getmany(
                *wanted, timeout_ms=500, max_records=self.settings.transform_batch_size
            )
            messages: list[ConsumerRecord[bytes, bytes]] = []
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= self.end[tp]:
                        continue
                    if self.at[tp] == self.start[tp] and self.selection.since is None:
                        self._saw_oldest(record.timestamp)
                    messages.append(record)
                    self.at[tp] = record.offset + 1
            for tp in wanted:
                # The fetch position moves past what is not a message too (a transaction's
                # control records, compacted gaps), which no record's offset would show.
                self.at[tp] = max(self.at[tp], await self.consumer.position(tp))
            if messages:
                self.report.read += len(messages)
                return messages
            if time.monotonic() - idle_since > IDLE_S:
                self.report.stopped_early = True
                return None
        return None

    def _saw_oldest(self, timestamp_ms: int) -> None:
        moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        if self.report.oldest_on_topic is None or moment < self.report.oldest_on_topic:
            self.report.oldest_on_topic = moment


class _Applier:
    """The live path with the reprocess flag: ``BatchProcessor`` (one transaction per
    batch, change events in the outbox), then the batch's outbox published as the live
    consumer does; a failed publish stays in the outbox for the transform's relay loop.
    A dry run decodes only."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, report: ReprocessReport, dry_run: bool
    ) -> None:
        self.settings = settings
        self.report = report
        self.dry_run = dry_run
        self.decoder = Decoder(settings.mappings_dir)
        self.processor = BatchProcessor(pool, settings, self.decoder, reprocess=True)
        self.pool = pool
        self.producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None

    async def start(self) -> None:
        if self.dry_run:
            return
        await kafka.ensure_topics(self.settings)
        self.producer = kafka.create_producer(self.settings)
        await self.producer.start()
        self.relay = OutboxRelay(self.pool, self.producer)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def __call__(self, messages: list[Message]) -> None:
        for message in messages:
            table = identity_of(message, None).table
            self.report.by_table[table] = self.report.by_table.get(table, 0) + 1
        if self.dry_run:
            self._decode_only(messages)
            return
        summary = await self.processor.process(messages)
        self._count(summary)
        await self._publish(summary)

    def _decode_only(self, messages: list[Message]) -> None:
        for message in messages:
            decoded = self.decoder.decode(message.value, message.offset)
            if decoded.rejection is not None:
                self.report.rejected += 1
                continue
            self.report.applied += len(decoded.records)
            self.report.skipped += len(decoded.skipped)

    def _count(self, summary: BatchSummary) -> None:
        self.report.applied += summary.applied
        # Stale (written by this mapping already, or older than the stored row) or
        # superseded by a newer version of the record in the same batch.
        self.report.unchanged += summary.records - summary.applied
        self.report.rejected += summary.rejected
        self.report.skipped += summary.skipped
        self.report.changes += summary.changes

    async def _publish(self, summary: BatchSummary) -> None:
        assert self.relay is not None
        try:
            await self.relay.publish_committed(summary.outbox)
        except (KafkaError, *UNAVAILABLE) as error:
            # Committed and in the outbox: the transform's relay loop publishes them.
            log.warning(
                "reprocess outbox publish failed; left to the relay",
                extra={"error": type(error).__name__},
            )
        finally:
            summary.outbox = []


async def _requests_beyond(
    pool: asyncpg.Pool, selection: Selection, report: ReprocessReport
) -> int:
    """The source's accepted requests older than the topic's oldest message (all of them
    when the topic holds nothing), which the reprocess could not read."""
    cutoff = (
        report.oldest_on_topic - HISTORY_MARGIN
        if report.oldest_on_topic is not None
        else datetime.now(UTC)
    )
    count = await pool.fetchval(
        "SELECT count(*) FROM webhook_requests WHERE source_id = $1 "
        "AND outcome = 'accepted' AND received_at < $2 "
        "AND ($3::text IS NULL OR EXISTS "
        "(SELECT 1 FROM unnest(tables) AS t WHERE lower(t) = lower($3)))",
        selection.source_id,
        cutoff,
        selection.table,
    )
    return int(count or 0)
