"""When pulls run, and the guarantee that one source never has two runs at once.

Every ingest replica runs this scheduler with the same definitions; the replicas agree
through PostgreSQL, not through each other:

- **One run per source across replicas.** A run holds the session advisory lock
  ``pg_try_advisory_lock(<source's key>)`` on a connection of its own for its whole
  duration; a replica that does not get it records a ``skipped_locked`` run and does
  nothing (the seeds' duplicates came from two overlapping runs of one integration). The
  lock dies with the session, so a crashed replica never leaves a source locked.
- **One run per slot.** Schedules are aligned (daily at a wall-clock time, ``every_minutes``
  and ``online`` on a grid counted from the Unix epoch), so replicas wake for the same slot.
  Under the lock, a replica that finds a run of the source started at or after the slot
  (by another replica) leaves it: slots are not run twice even when replicas wake apart.
- **Never overlapping in one process.** One task per source runs its schedule one run after
  another, and an asyncio lock per source answers "run now" with a skip (409) while a run
  is going.
- **The cursor moves after Kafka.** Each page is published and acknowledged (``acks=all``)
  before the next is asked for, and the cursor is saved with the run's ``ok`` status only
  after the last page: a crash or a failed page re-pulls rather than skips. Event ids are
  deterministic (see ``rest_poller``), so a re-pull duplicates nothing downstream.
- A missed slot (every replica down at 02:00) is caught up at start: if the last run of a
  source began before its latest slot, the first run happens at once.
- FTP folder pulls (``ftp_folder``) run under the same schedule, locks and run records; what
  they do inside a run is ``ftp_folder``'s (their cursor is a ledger of files, saved file by
  file, so ``_finish`` does not write it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from ponte.ingest.publisher import BrokerUnavailable, EventPublisher
from ponte.ingest.pulls import runs
from ponte.ingest.pulls.ftp_folder import FtpFolderPuller
from ponte.ingest.pulls.rest_poller import CursorTracker, PullFailed, RestPoller
from ponte.ingest.pulls.runs import RunRecord, Trigger
from ponte.shared import db
from ponte.shared.kafka import sleep_or_stop
from ponte.shared.mapping import mapping_for
from ponte.shared.pulls import (
    FtpFolderPullDefinition,
    PullDefinition,
    RestPullDefinition,
    check_keys,
    check_sources,
    load_pulls_file,
    next_run,
    previous_slot,
)
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind
from ponte.shared.sources import fetch_sources

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class UnknownPull(LookupError):
    """No pull is defined for this source."""


def lock_key(source_id: str) -> int:
    """The source's advisory lock key: 64 bits of a digest, so ids never collide in
    practice and no other Ponte lock (another namespace) shares it."""
    digest = hashlib.sha256(f"ponte.pull\x00{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def key_fields_by_source(
    definitions: list[PullDefinition], mappings_dir: Path | None
) -> dict[str, list[str] | None]:
    """Each REST pull's record key fields: its table's key in the source's mapping (as
    webhooks of the source are keyed), else the definition's own ``rows.key``. (An FTP
    folder's files are keyed per file, by their table's key in the mapping.)"""
    rest = [definition for definition in definitions if isinstance(definition, RestPullDefinition)]
    mapping_keys = {
        definition.source_id: mapping_for(
            SourceKind.ERP, definition.source_id, mappings_dir
        ).record_key_fields()
        for definition in rest
    }
    check_keys(definitions, mapping_keys)
    return {
        definition.source_id: mapping_keys[definition.source_id].get(definition.rows.table)
        or definition.rows.key
        for definition in rest
    }


class PullScheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: EventPublisher,
        definitions: list[PullDefinition],
        key_fields: dict[str, list[str] | None],
        *,
        retention_days: int = 30,
        mappings_dir: Path | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self.definitions = {definition.source_id: definition for definition in definitions}
        self._key_fields = key_fields
        self._retention = timedelta(days=retention_days)
        self._mappings_dir = mappings_dir
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._owns_client = client is None
        self._clock = clock
        self._local_locks = {source_id: asyncio.Lock() for source_id in self.definitions}
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        for definition in self.definitions.values():
            if definition.active:
                self._spawn(self._schedule_loop(definition), f"pull-{definition.source_id}")
        if self.definitions:
            self._spawn(self._prune_loop(), "pull-runs-prune")

    async def stop(self) -> None:
        """Stop the schedules; a run going is interrupted and recorded ``failed`` (its
        cursor does not move, so the next run re-pulls what it had)."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    def _spawn(self, coroutine: object, name: str) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.create_task(coroutine, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _schedule_loop(self, definition: PullDefinition) -> None:
        due = await self._first_due(definition)
        while True:
            wait_s = (due - self._clock()).total_seconds()
            if await sleep_or_stop(self._stopping, max(wait_s, 0.0)):
                return
            try:
                await self.run(definition, trigger="schedule", slot=due)
            except _DB_ERRORS as error:
                log.warning(
                    "pull not run: database unavailable",
                    extra={"source": definition.source_id, "error": type(error).__name__},
                )
            # A run longer than the interval skips the slots it overlapped, rather than
            # starting them late one after another.
            due = next_run(definition, max(due, self._clock()))

    async def _first_due(self, definition: PullDefinition) -> datetime:
        now = self._clock()
        try:
            async with self._pool.acquire() as connection:
                last = await runs.last_started(connection, definition.source_id)
        except _DB_ERRORS:
            last = None
        slot = previous_slot(definition, now)
        if last is not None and last < slot:
            return slot  # catch up the slot every replica missed
        return next_run(definition, now)

    async def _prune_loop(self) -> None:
        while not await sleep_or_stop(self._stopping, PRUNE_EVERY_S):
            try:
                await runs.prune_runs(self._pool, self._clock() - self._retention)
            except _DB_ERRORS as error:
                log.warning("pull runs pruning failed", extra={"error": type(error).__name__})

    # --- runs -----------------------------------------------------------------------------
    async def run_now(self, source_id: str, *, wait: bool = False) -> RunRecord:
        """ "Executar agora": start a run and answer once it has started (or, with ``wait``,
        finished). A run already going yields a ``skipped_locked`` record (HTTP 409)."""
        definition = self.definitions.get(source_id)
        if definition is None:
            raise UnknownPull(source_id)
        started: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        task = self._spawn(
            self.run(definition, trigger="manual", started=started), f"pull-now-{source_id}"
        )
        waiting: set[asyncio.Future[object]] = {task, started}  # type: ignore[arg-type]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if wait or not started.done():
            record = await task
            assert isinstance(record, RunRecord), "a manual run is never left for a slot"
            return record
        return started.result()

    async def run(
        self,
        definition: PullDefinition,
        *,
        trigger: Trigger,
        slot: datetime | None = None,
        started: asyncio.Future[RunRecord] | None = None,
    ) -> RunRecord | None:
        """One run of the source, under its locks; None when another replica already ran
        this ``slot``. ``started`` is resolved with the run's record as soon as it is
        known (running or skipped)."""
        source_id = definition.source_id
        local = self._local_locks[source_id]
        async with self._pool.acquire() as connection:
            if local.locked():
                return _announce(started, await self._skipped(connection, definition, trigger))
            async with local:
                key = lock_key(source_id)
                if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    return _announce(started, await self._skipped(connection, definition, trigger))
                try:
                    return await self._run_locked(connection, definition, trigger, slot, started)
                finally:
                    await _unlock(connection, key)

    async def _skipped(
        self, connection: db.DbConnection, definition: PullDefinition, trigger: Trigger
    ) -> RunRecord:
        log.info(
            "pull skipped: a run of this source is going",
            extra={"source": definition.source_id, "trigger": trigger},
        )
        return await runs.record_skipped(
            connection, source_id=definition.source_id, trigger=trigger, at=self._clock()
        )

    async def _run_locked(
        self,
        connection: db.DbConnection,
        definition: PullDefinition,
        trigger: Trigger,
        slot: datetime | None,
        started: asyncio.Future[RunRecord] | None,
    ) -> RunRecord | None:
        source_id = definition.source_id
        now = self._clock()
        if slot is not None:
            last = await runs.last_started(connection, source_id)
            if last is not None and last >= slot:
                return None  # another replica ran this slot already
        await runs.interrupt_orphans(connection, source_id, now)
        cursor, basis = await runs.saved_cursor(connection, source_id)
        if isinstance(definition, FtpFolderPullDefinition):
            cursor = None  # the ledger of files taken: too long for a run row, and no basis
        run = await runs.begin_run(
            connection, source_id=source_id, trigger=trigger, started_at=now, cursor_before=cursor
        )
        _announce(started, run)
        began = time.perf_counter()
        try:
            if isinstance(definition, FtpFolderPullDefinition):
                await FtpFolderPuller(
                    definition, self._publisher, self._pool, connection, self._mappings_dir
                ).run(run)
            else:
                await self._pull(definition, run, basis)
        except asyncio.CancelledError:
            run.status, run.error = "failed", "interrupted: ingest stopped during the run"
            await asyncio.shield(self._finish(connection, run, began, definition))
            raise
        await self._finish(connection, run, began, definition)
        return run

    async def _pull(self, definition: RestPullDefinition, run: RunRecord, basis: int) -> None:
        poller = RestPoller(definition, self._client, self._key_fields.get(definition.source_id))
        tracker = CursorTracker(run.cursor_before)
        try:
            async for page in poller.pages(tracker, basis=basis, received_at=run.started_at):
                if page.events:
                    await self._publisher.publish(page.events, "application/json")
                run.pages += 1
                run.rows_pulled += len(page.events)
                run.rows_rejected += len(page.rejected)
                run.rejected.extend(page.rejected)
        except PullFailed as error:
            run.status, run.error = "failed", str(error)
            return
        except BrokerUnavailable as error:
            run.status, run.error = "failed", f"page {run.pages + 1} not acknowledged: {error}"
            return
        run.status, run.cursor_after = "ok", tracker.after

    async def _finish(
        self,
        connection: db.DbConnection,
        run: RunRecord,
        began: float,
        definition: PullDefinition,
    ) -> None:
        run.finished_at = self._clock()
        run.duration_ms = (time.perf_counter() - began) * 1000
        if run.status != "ok":
            run.cursor_after = run.cursor_before
        rest = isinstance(definition, RestPullDefinition)
        await runs.finish_run(connection, run, save_cursor=rest)
        log_run = log.info if run.status == "ok" else log.warning
        log_run(
            "pull run finished",
            extra={
                "source": run.source_id,
                "run_id": run.id,
                "status": run.status,
                "rows": run.rows_pulled,
                "rejected": run.rows_rejected,
                "duration_ms": round(run.duration_ms),
                "error": run.error,
            },
        )


def _announce(
    started: asyncio.Future[RunRecord] | None, record: RunRecord | None
) -> RunRecord | None:
    if started is not None and record is not None and not started.done():
        started.set_result(record)
    return record


async def _unlock(connection: db.DbConnection, key: int) -> None:
    """Release the advisory lock; if that fails, close the session, which releases it too
    (a pooled session must never keep a lock: db.create_pool does not reset sessions)."""
    try:
        await connection.execute("SELECT pg_advisory_unlock($1)", key)
    except (*_DB_ERRORS, asyncio.CancelledError):
        connection.terminate()
        raise


async def build_scheduler(
    settings: Settings, pool: asyncpg.Pool, publisher: EventPublisher
) -> PullScheduler:
    """The scheduler of ``PONTE_PULLS_FILE`` (empty without one), its definitions checked
    against the sources in PostgreSQL: a bad file stops ingest at start, naming the field."""
    definitions: list[PullDefinition] = []
    if settings.pulls_file is not None and not settings.pulls_file.exists():
        # The ConfigMap names a path every cluster has; one without pulls mounts no file.
        log.warning("no pulls file; no scheduled pulls", extra={"path": str(settings.pulls_file)})
    elif settings.pulls_file is not None:
        definitions = check_sources(
            load_pulls_file(settings.pulls_file), await fetch_sources(pool, None)
        )
    return PullScheduler(
        pool,
        publisher,
        definitions,
        key_fields_by_source(definitions, settings.mappings_dir),
        retention_days=settings.history_retention_days,
        mappings_dir=settings.mappings_dir,
    )


async def pull_once(settings: Settings, source_id: str) -> RunRecord:
    """``ponte pull <source_id>``: one run now, from this process, under the same lock as
    the ingest replicas' schedulers."""
    pool = await db.create_pool(settings, min_size=1, max_size=2)
    publisher = EventPublisher(settings)
    scheduler: PullScheduler | None = None
    try:
        await publisher.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(publisher.started.wait(), settings.produce_timeout_s * 4)
        scheduler = await build_scheduler(settings, pool, publisher)
        return await scheduler.run_now(source_id, wait=True)
    finally:
        if scheduler is not None:
            await scheduler.stop()
        await publisher.stop()
        await pool.close()
