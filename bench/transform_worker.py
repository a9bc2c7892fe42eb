"""One measured transform run, in a process of its own (started by ``bench/transform.py``).

The real consumer loop (``TransformConsumer`` with ``BatchProcessor`` and ``OutboxRelay``,
as ``ponte transform`` wires them, on uvloop when installed, as uvicorn runs it) reads the
raw topic from the start under a fresh consumer group until every one of ``--events``
messages has been applied, then stops and writes a JSON report.

It runs apart from the benchmark driver so that its peak RSS (``VmHWM``) and CPU time are
the transform's alone, and so that py-spy can sample it. The clock starts when the first
batch reaches the processor (the consumer's start-up and group join are not the
transform's throughput) and stops when the transaction holding the last event has
committed (``BatchProcessor.process`` returns only then).

    .venv/bin/python bench/transform_worker.py --settings s.json --events N --result r.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from ponte.shared import db, kafka
from ponte.shared.settings import Settings
from ponte.transform.app import tune_garbage_collector
from ponte.transform.consumer import TransformConsumer
from ponte.transform.outbox import OutboxRelay
from ponte.transform.processor import BatchProcessor, BatchSummary, Message

STALL_S = 120.0
"""Give up when no batch has completed for this long (a hung run must not hang the bench)."""


class TimedProcessor(BatchProcessor):
    """The real processor, plus a clock and a tally of what each committed batch held."""

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, expected: int, marks: Path | None
    ) -> None:
        super().__init__(pool, settings)
        self.gc_clock = GcClock()
        gc.callbacks.append(self.gc_clock)
        self.expected = expected
        self.marks = marks
        """Directory where ``first`` and ``done`` appear when the clock starts and stops,
        so the driver can meter PostgreSQL's CPU over the same window."""
        self.messages = 0
        self.batches = 0
        self.totals = BatchSummary()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.cpu_first: float | None = None
        self.cpu_last: float | None = None
        self.progress_at = time.monotonic()
        self.done = asyncio.Event()
        self.timeline: list[tuple[float, int, float]] = []
        """(seconds since the first batch, messages, CPU seconds) at each batch's end:
        shows whether a batch costs more as the tables grow."""

    async def process(self, messages: list[Message]) -> BatchSummary:
        if self.first_at is None:
            self.first_at = time.perf_counter()
            self.cpu_first = time.process_time()
            self.gc_clock.counting = True
            self._mark("first")
        summary = await super().process(messages)
        self.messages += len(messages)
        self.batches += 1
        self.timeline.append(
            (
                time.perf_counter() - self.first_at,
                self.messages,
                time.process_time() - (self.cpu_first or 0.0),
            )
        )
        for name in ("applied", "stale", "rejected", "changes", "splits"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(summary, name))
        self.totals.rejected_codes += summary.rejected_codes
        self.progress_at = time.monotonic()
        if self.messages >= self.expected and not self.done.is_set():
            self.last_at = time.perf_counter()
            self.cpu_last = time.process_time()
            self.gc_clock.counting = False
            self._mark("done")
            self.done.set()
        return summary

    def _mark(self, name: str) -> None:
        if self.marks is not None:
            (self.marks / name).touch()


class GcClock:
    """Time spent in the cyclic garbage collector, by generation (``gc.callbacks``): the
    transform allocates many small containers per row, and full collections walk the whole
    heap, so this is a cost of its own, exact where a sampling profiler only estimates."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        self.counting = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.counting:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1


def peak_rss_kib() -> int:
    """The process's resident-set high-water mark, in KiB (``VmHWM``; ru_maxrss if absent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def run(
    settings: Settings,
    expected: int,
    marks: Path | None,
    relay: bool = True,
    gc_freeze: bool = True,
    gc_threshold: int | None = None,
) -> dict[str, Any]:
    pool = await db.create_pool(settings, min_size=2, max_size=10)
    producer = kafka.create_producer(settings)
    await producer.start()
    processor = TimedProcessor(pool, settings, expected, marks)
    consumer = TransformConsumer(
        settings, processor, OutboxRelay(pool, producer) if relay else None
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    if gc_freeze:
        tune_garbage_collector()  # as the service's lifespan does, once its tasks exist
    if gc_threshold is not None:
        gc.set_threshold(gc_threshold, *gc.get_threshold()[1:])
    error: str | None = None
    try:
        while not processor.done.is_set():
            if task.done():
                error = f"consumer stopped: {task.exception()!r}"
                break
            if time.monotonic() - processor.progress_at > STALL_S:
                error = f"no batch completed for {STALL_S:.0f}s at {processor.messages} messages"
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await producer.stop()
        await pool.close()
    seconds = (processor.last_at or 0.0) - (processor.first_at or 0.0)
    cpu = (processor.cpu_last or 0.0) - (processor.cpu_first or 0.0)
    return {
        "error": error,
        "events": processor.messages,
        "batches": processor.batches,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "applied": processor.totals.applied,
        "stale": processor.totals.stale,
        "rejected": processor.totals.rejected,
        "rejected_codes": sorted(set(processor.totals.rejected_codes)),
        "changes": processor.totals.changes,
        "splits": processor.totals.splits,
        "peak_rss_kib": peak_rss_kib(),
        "gc_seconds": [round(x, 3) for x in processor.gc_clock.seconds],
        "gc_collections": processor.gc_clock.collections,
        "timeline": [[round(t, 4), n, round(c, 4)] for t, n, c in processor.timeline],
    }


def run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Run on uvloop when it is installed: uvicorn (so ``ponte transform``) picks it too."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main), "asyncio"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main), "uvloop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", type=Path, required=True, help="Settings as JSON.")
    parser.add_argument("--events", type=int, required=True, help="Messages to wait for.")
    parser.add_argument("--result", type=Path, required=True, help="Where to write the JSON.")
    parser.add_argument("--marks", type=Path, help="Directory for the first/done marks.")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="Experiment, not what the service does: no gc.freeze() and no raised "
        "generation-0 threshold once started (tune_garbage_collector), as before.",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        help="Experiment: this generation-0 collection threshold instead of the service's.",
    )
    parser.add_argument(
        "--no-relay",
        action="store_true",
        help="Experiment, not what the service does: no outbox publishing between batches "
        "(change events stay in the outbox), as if another process relayed them.",
    )
    args = parser.parse_args(argv)
    values = json.loads(args.settings.read_text())
    settings = Settings(_env_file=None, **values)
    report, loop = run_loop(
        run(
            settings,
            args.events,
            args.marks,
            relay=not args.no_relay,
            gc_freeze=not args.no_gc_freeze,
            gc_threshold=args.gc_threshold,
        )
    )
    report["loop"] = loop
    report["gc_freeze"] = not args.no_gc_freeze
    report["gc_threshold"] = list(gc.get_threshold())
    report["relay"] = not args.no_relay
    args.result.write_text(json.dumps(report, indent=2))
    return 0 if report["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
