"""Benchmark the transform against dlt on the same nested ERP rows, and print the figures.

    .venv/bin/python bench/transform.py                 # full: 25,000 events, 3 repeats
    .venv/bin/python bench/transform.py --quick         # 3,000 events, 1 repeat
    .venv/bin/python bench/transform.py --profile       # plus one py-spy-sampled run

Needs the tools in bench/transform_requirements.txt (dlt with its PostgreSQL destination;
py-spy for ``--profile``). Exits 0 when the transform writes rows at least
``TARGET_RATIO`` times as fast as dlt and every correctness check passes, 1 otherwise.

What runs:
- the embedded stack (``ponte.shared.embedded``: Tansu broker and a throwaway
  PostgreSQL on loopback), migrated, with Ponte's topics created;
- a synthetic ERP feed (``transform_data``): salespeople, companies, contacts with
  forward spouse references, products, orders and invoices with their items nested,
  the code table, ``$code`` objects, Brazilian numbers, dates and valid CNPJ/CPF, one
  record per raw event as ingest writes them. All of it is produced to the raw topic
  before anything is timed, so the transform drains a backlog;
- per repeat, the transform (``transform_worker``: the real ``TransformConsumer`` with
  ``BatchProcessor`` and ``OutboxRelay``, in its own process) on empty CRM tables under
  a fresh consumer group, timed from the first batch to the commit of the last; then
  dlt (``transform_dlt``, also its own process) loading the same root rows, child
  tables nested, into a dataset of its own, timed around ``pipeline.run``.

Rows/s counts what each wrote: for the transform, the rows in the CRM tables afterwards
(roots, children, codes and placeholder products); for dlt, the rows in its parent and
child tables. The transform's rows are also checked against what the feed must become
(counts per entity, no parked or rejected record, references and totals right): a fast
transform that loses rows would not count.

Next to each figure, over the same window: CPU in % of one core of the measured process,
of PostgreSQL (queries, background, exited workers), of the broker and of everything else
on the machine (on a shared 2-core box a busy neighbour shows up there and makes the run
noisy: ``--wait-quiet`` waits for it to pass), and the peak RSS. Because other load
changes rates far more than costs, CPU microseconds per row are reported too. For the
transform also: its rate in each quarter of the run, the rows its queries read by
sequential scans (and the tables autovacuum analysed meanwhile), and the time its garbage
collector took.

``--profile`` adds one run sampled by py-spy with native frames (sampling pauses the
process, so that run is slower and not counted); the summary, by area and by function,
is printed and kept with the raw samples in bench/results. The worker tunes the garbage
collector as the service does (start-up heap frozen, generation-0 threshold raised).
``--no-gc-freeze``, ``--gc-threshold`` and ``--no-relay`` are experiments, not what the
service does: the worker leaves the collector as Python sets it, sets another
generation-0 threshold, or leaves the outbox to be published by someone else.

Figures are medians over ``--repeat`` runs. Everything started is stopped on exit,
Ctrl-C or error. Results go to ``bench/results/transform-<timestamp>.json``;
docs/benchmarks-transform.md records a reference run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from ponte.shared import db, kafka
from ponte.shared.crm_model import crm_model
from ponte.shared.embedded import EmbeddedBroker, EmbeddedPostgres, embedded_stack
from ponte.shared.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
sys.path.insert(0, str(BENCH_DIR))
from common import Children, git_state, raise_keyboard_interrupt, stack_settings  # noqa: E402
from transform_data import (  # type: ignore[import-not-found]  # noqa: E402 - the path above
    Dataset,
    generate,
)

TARGET_RATIO = 3.0
"""The transform's rows/s must be at least this multiple of dlt's."""
FULL_MIN_ROWS = 100_000
"""A full run must write at least this many rows (roots, children, codes, placeholders)."""
STALL_S = 3600.0
"""A worker that has not finished after this long is stopped and the run fails."""
QUIET_PCT = 30.0
"""Other load, in % of one core, under which the machine counts as quiet."""
PROFILE_RATE = 100
"""py-spy samples per second in the profiled run."""
BOOKKEEPING_TABLES = ("parked_references", "outbox", "transform_rejections", "unmapped_fields")


@dataclass
class Plan:
    """What to run, from the command line (recorded with the results)."""

    events: int
    repeat: int
    batch_size: int
    partitions: int
    seed: int
    profile: bool
    dlt_formats: list[str]
    quick: bool
    wait_quiet_s: float = 0.0
    no_gc_freeze: bool = False
    gc_threshold: int | None = None
    no_relay: bool = False
    command: str = ""


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(
        description="Transform vs dlt rows/s on the same nested ERP rows."
    )
    parser.add_argument("--events", type=int, help="Raw events (default 25,000; quick 3,000).")
    parser.add_argument("--quick", action="store_true", help="Small smoke run, 1 repeat.")
    parser.add_argument("--repeat", type=int, help="Runs of each side (default 3; quick 1).")
    parser.add_argument("--batch-size", type=int, default=500, help="transform_batch_size.")
    parser.add_argument("--partitions", type=int, default=6, help="Raw topic partitions.")
    parser.add_argument("--seed", type=int, default=20241114, help="Data generator seed.")
    parser.add_argument(
        "--profile", action="store_true", help="One extra transform run sampled with py-spy."
    )
    parser.add_argument(
        "--dlt-formats",
        default="default",
        help="Comma-separated dlt loader_file_format values to measure; the first is the "
        "baseline of the ratio ('default' is dlt's choice for postgres: insert_values).",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Before each run, wait up to this long for the machine to be quiet (other "
        f"load under {QUIET_PCT:.0f}%% of a core); the load found is recorded either way.",
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="Experiment: the transform worker neither freezes the start-up heap nor raises "
        "the generation-0 threshold (the service does both); shows what the garbage "
        "collector costs without them.",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        help="Experiment: the transform worker's generation-0 collection threshold instead "
        "of the service's (gc.set_threshold; Python's default is 700).",
    )
    parser.add_argument(
        "--no-relay",
        action="store_true",
        help="Experiment: the transform worker does not publish the outbox between batches "
        "(as if another process relayed it); the outbox check is then skipped.",
    )
    args = parser.parse_args(argv)
    events = args.events or (3_000 if args.quick else 25_000)
    return Plan(
        events=events,
        repeat=args.repeat or (1 if args.quick else 3),
        batch_size=args.batch_size,
        partitions=args.partitions,
        seed=args.seed,
        profile=args.profile,
        dlt_formats=[f.strip() for f in args.dlt_formats.split(",") if f.strip()],
        quick=args.quick,
        wait_quiet_s=args.wait_quiet,
        no_gc_freeze=args.no_gc_freeze,
        gc_threshold=args.gc_threshold,
        no_relay=args.no_relay,
        command=shlex.join([".venv/bin/python", "bench/transform.py", *(argv or sys.argv[1:])]),
    )


# --- CPU accounting ----------------------------------------------------------------------


def _ticks(pid: int, *, with_children: bool = False) -> int:
    """utime+stime of a process (plus its waited-for children's), in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    used = int(fields[11]) + int(fields[12])
    return used + (int(fields[13]) + int(fields[14]) if with_children else 0)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _machine_ticks() -> int:
    """Busy ticks of the whole machine (all CPUs, not idle nor iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]


@dataclass
class CpuMeter:
    """CPU used between ``start`` and ``stop`` by PostgreSQL, by the broker and by the
    whole machine. PostgreSQL's is split: ``pg_backends`` (the connections serving
    queries), ``pg_background`` (walwriter, checkpointer ..., live the whole time) and
    ``pg_exited`` (children that ended in between, counted by the postmaster: mostly
    autovacuum workers), ``postgres`` being their sum."""

    postmaster: int
    broker: int
    marks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def _sample(self) -> dict[str, int]:
        sample = {"pg_backends": 0, "pg_background": _ticks(self.postmaster)}
        for child in _children_of(self.postmaster):
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{child}/cmdline").read_bytes()
                kind = "pg_backends" if b"127.0.0.1(" in command else "pg_background"
                sample[kind] += _ticks(child)
        sample["pg_exited"] = _ticks(self.postmaster, with_children=True) - _ticks(self.postmaster)
        sample["broker"] = _ticks(self.broker)
        sample["machine"] = _machine_ticks()
        return sample

    def start(self) -> None:
        self.marks = self._sample()
        self._started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Core-seconds used by each since ``start``."""
        end = self._sample()
        self.seconds = time.perf_counter() - self._started
        hz = os.sysconf("SC_CLK_TCK")
        used = {name: (end[name] - self.marks[name]) / hz for name in end}
        used["postgres"] = used["pg_backends"] + used["pg_background"] + used["pg_exited"]
        return used


# --- infrastructure ----------------------------------------------------------------------


@dataclass
class Stack:
    broker: EmbeddedBroker
    database: EmbeddedPostgres
    settings: Settings
    workdir: Path

    @property
    def dsn(self) -> str:
        return self.settings.asyncpg_dsn

    def cpu_meter(self) -> CpuMeter:
        postmaster = int(
            (self.database.workdir / "pg" / "data" / "postmaster.pid").read_text().split()[0]
        )
        broker_process = getattr(self.broker, "_broker", None)
        return CpuMeter(postmaster, broker_process.pid if broker_process else -1)


async def produce(settings: Settings, dataset: Dataset) -> float:
    """Every event to the raw topic, keyed as ingest keys them; returns the seconds taken."""
    await kafka.ensure_topics(settings)
    producer = kafka.create_producer(settings)
    await producer.start()
    started = time.perf_counter()
    try:
        chunk: list[asyncio.Future[Any]] = []
        for event in dataset.events:
            chunk.append(
                await producer.send(
                    settings.raw_topic,
                    value=event.model_dump_json().encode(),
                    key=event.partition_key,
                )
            )
            if len(chunk) >= 2000:
                await asyncio.gather(*chunk)
                chunk.clear()
        await asyncio.gather(*chunk)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def reset_crm(dsn: str) -> None:
    """Empty the CRM and the transform's bookkeeping: each run starts from nothing, in the
    state of a freshly migrated database (TRUNCATE leaves the tables never analysed, as
    they are after ``ponte migrate``)."""
    tables = [spec.table for spec in crm_model().entities.values()]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            f"TRUNCATE {', '.join(tables + list(BOOKKEEPING_TABLES))} RESTART IDENTITY CASCADE"
        )
    finally:
        await connection.close()


# --- checks ------------------------------------------------------------------------------

# (what, query, expected): every reference the feed sends resolves, totals add up.
SQL_CHECKS: list[tuple[str, str]] = [
    ("parked references left", "SELECT count(*) FROM parked_references"),
    ("rejected records", "SELECT count(*) FROM transform_rejections"),
    ("outbox messages not published", "SELECT count(*) FROM outbox"),
    ("unmapped fields reported", "SELECT count(*) FROM unmapped_fields"),
    ("tombstoned rows", "SELECT (SELECT count(*) FROM orders WHERE deleted_at IS NOT NULL) + "
     "(SELECT count(*) FROM order_items WHERE deleted_at IS NOT NULL)"),
    ("companies without salesperson or segment",
     "SELECT count(*) FROM companies WHERE salesperson_id IS NULL OR segment_id IS NULL"),
    ("contacts without company", "SELECT count(*) FROM contacts WHERE company_id IS NULL"),
    ("orders without company, contact, salesperson or status",
     "SELECT count(*) FROM orders WHERE company_id IS NULL OR contact_id IS NULL "
     "OR salesperson_id IS NULL OR status_id IS NULL"),
    ("order items without order or product",
     "SELECT count(*) FROM order_items WHERE order_id IS NULL OR product_id IS NULL"),
    ("invoices without order, company or status",
     "SELECT count(*) FROM invoices WHERE order_id IS NULL OR company_id IS NULL "
     "OR status_id IS NULL"),
    ("invoice items without invoice or product",
     "SELECT count(*) FROM invoice_items WHERE invoice_id IS NULL OR product_id IS NULL"),
    ("orders whose total is not the sum of their items",
     "SELECT count(*) FROM orders o WHERE o.total IS DISTINCT FROM "
     "(SELECT sum(i.total) FROM order_items i WHERE i.order_id = o.id)"),
    ("items whose total is not quantity x price",
     "SELECT count(*) FROM order_items WHERE total <> quantity * unit_price"),
    ("documents not stored as bare digits",
     "SELECT (SELECT count(*) FROM companies WHERE document !~ '^[0-9]{14}$') + "
     "(SELECT count(*) FROM contacts WHERE document !~ '^[0-9]{11}$')"),
    ("states (UF) without their region", "SELECT count(*) FROM codes "
     "WHERE list_name = 'UF' AND parent_id IS NULL"),
]  # fmt: skip


async def check_crm(
    dsn: str, dataset: Dataset, *, outbox: bool = True
) -> tuple[dict[str, int], list[str]]:
    """Rows per entity, and every way the result differs from what the feed must become."""
    connection = await asyncpg.connect(dsn)
    problems: list[str] = []
    try:
        rows = {
            entity: int(await connection.fetchval(f"SELECT count(*) FROM {spec.table}"))
            for entity, spec in crm_model().entities.items()
        }
        for entity in sorted(set(rows) | set(dataset.expected_rows)):
            if rows.get(entity, 0) != dataset.expected_rows.get(entity, 0):
                problems.append(
                    f"{entity}: {rows.get(entity, 0)} rows, expected "
                    f"{dataset.expected_rows.get(entity, 0)}"
                )
        for what, query in SQL_CHECKS:
            if not outbox and "FROM outbox" in query:
                continue
            found = int(await connection.fetchval(query))
            if found:
                problems.append(f"{what}: {found}")
        spouses = int(
            await connection.fetchval("SELECT count(*) FROM contacts WHERE spouse_id IS NOT NULL")
        )
        if spouses != dataset.references["spouse"]:
            problems.append(
                f"contacts with a spouse: {spouses}, expected {dataset.references['spouse']}"
            )
    finally:
        await connection.close()
    return rows, problems


async def scan_stats(dsn: str) -> dict[str, list[int]]:
    """Per CRM table: [sequential scans, rows they read, index scans, auto-analyses]
    (cumulative counters: the difference over a run is what the run did)."""
    tables = [spec.table for spec in crm_model().entities.values()]
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx_scan, "
            "autoanalyze_count FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
            tables,
        )
    finally:
        await connection.close()
    return {
        row["relname"]: [
            row["seq_scan"], row["seq_tup_read"], row["idx_scan"], row["autoanalyze_count"]
        ]
        for row in rows
    }  # fmt: skip


def scan_delta(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, Any]:
    """What a run's queries read: rows read by sequential scans of the CRM tables (each
    batch's lookups should use the unique (source_id, source_key) index; scans whose cost
    grows with the table make a long load slow down), and the tables autovacuum analysed
    meanwhile (statistics taken while a table was small steer the planner to those scans)."""
    per_table = {
        table: [a - b for a, b in zip(after[table], before.get(table, [0, 0, 0, 0]), strict=True)]
        for table in after
    }
    return {
        "seq_scans": sum(v[0] for v in per_table.values()),
        "seq_rows_read": sum(v[1] for v in per_table.values()),
        "index_scans": sum(v[2] for v in per_table.values()),
        "autoanalyzed": sorted(t for t, v in per_table.items() if v[3] > 0),
        "seq_rows_read_by_table": {t: v[1] for t, v in per_table.items() if v[1]},
    }


async def drop_schema(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


# --- one run of each side ----------------------------------------------------------------


def run_transform(
    stack: Stack,
    plan: Plan,
    dataset: Dataset,
    children: Children,
    label: str,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    asyncio.run(reset_crm(stack.dsn))
    busy_before = settle(plan)
    scans_before = asyncio.run(scan_stats(stack.dsn))
    settings = stack.settings.model_copy(
        update={"transform_group_id": f"bench-transform-{label}-{time.time_ns()}"}
    )
    settings_file = stack.workdir / f"settings-{label}.json"
    settings_file.write_text(settings.model_dump_json())
    result_file = stack.workdir / f"transform-{label}.json"
    command = [
        sys.executable, str(BENCH_DIR / "transform_worker.py"), "--settings", str(settings_file),
        "--events", str(len(dataset.events)), "--result", str(result_file),
    ]  # fmt: skip
    marks = stack.workdir / f"marks-{label}"
    marks.mkdir()
    command += ["--marks", str(marks)]
    if plan.no_gc_freeze:
        command.append("--no-gc-freeze")
    if plan.gc_threshold is not None:
        command += ["--gc-threshold", str(plan.gc_threshold)]
    if plan.no_relay:
        command.append("--no-relay")
    meter = stack.cpu_meter()
    worker = children.start(command, stack.workdir / f"transform-{label}.log")
    sampler = None
    if profile_to is not None:
        sampler = children.start(
            [py_spy(), "record", "--pid", str(worker.pid), "--rate", str(PROFILE_RATE),
             "--format", "raw", "--native", "--output", str(profile_to)],
            stack.workdir / "py-spy.log",
        )  # fmt: skip
    cpu = meter_window(meter, worker, marks)
    code = children.wait(worker, timeout_s=60)
    if sampler is not None:
        children.wait(sampler, timeout_s=120)
    if not result_file.exists():
        log = (stack.workdir / f"transform-{label}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"transform worker exited with {code} and no report:\n{log}")
    report: dict[str, Any] = json.loads(result_file.read_text())
    time.sleep(1.0)  # PostgreSQL publishes table statistics within a second
    report["scans"] = scan_delta(scans_before, asyncio.run(scan_stats(stack.dsn)))
    rows, problems = asyncio.run(check_crm(stack.dsn, dataset, outbox=not plan.no_relay))
    if report["error"]:
        problems.insert(0, f"worker: {report['error']}")
    report.update(
        rows=sum(rows.values()),
        rows_by_entity=rows,
        problems=problems,
        cpu_core_seconds=cpu,
        metered_s=meter.seconds,
        machine_busy_before_pct=busy_before,
    )
    seconds = report["seconds"] or float("nan")
    report["rows_per_s"] = report["rows"] / seconds
    report["events_per_s"] = report["events"] / seconds
    report["events_per_s_by_quarter"] = by_quarter(report.pop("timeline"))
    return report


def by_quarter(timeline: list[list[float]]) -> list[float]:
    """Events/s in each quarter of the run (by events): a rate that falls as the tables
    fill says a batch's cost grows with the data already stored."""
    if not timeline:
        return []
    total = timeline[-1][1]
    rates = []
    start_t, start_n = 0.0, 0
    for quarter in (1, 2, 3, 4):
        end = next(point for point in timeline if point[1] >= total * quarter / 4)
        seconds = end[0] - start_t
        rates.append(round((end[1] - start_n) / seconds, 1) if seconds > 0 else float("nan"))
        start_t, start_n = end[0], int(end[1])
    return rates


def meter_window(meter: CpuMeter, worker: subprocess.Popen[bytes], marks: Path) -> dict[str, float]:
    """Meter CPU from a worker's ``first`` mark to its ``done`` mark (polled every 20 ms,
    so the window matches the worker's own clock to within that)."""
    deadline = time.monotonic() + STALL_S
    started = False
    while worker.poll() is None and time.monotonic() < deadline:
        if not started and (marks / "first").exists():
            meter.start()
            started = True
        if started and (marks / "done").exists():
            return meter.stop()
        time.sleep(0.02)
    if worker.poll() is None:
        raise RuntimeError("a worker neither finished nor reported in time")
    if not started:
        meter.start()
    return meter.stop()


def run_dlt(
    stack: Stack, plan: Plan, rows_file: Path, file_format: str, children: Children, label: str
) -> dict[str, Any]:
    dataset = f"dlt_bench_{label}".replace("-", "_")
    asyncio.run(drop_schema(stack.dsn, dataset))
    busy_before = settle(plan)
    result_file = stack.workdir / f"dlt-{label}.json"
    pipelines = stack.workdir / f"dlt-pipelines-{label}"
    # dlt insists on a password; the embedded cluster trusts loopback and ignores it.
    dsn = stack.dsn.replace("://postgres@", "://postgres:unused@", 1)
    command = [
        sys.executable, str(BENCH_DIR / "transform_dlt.py"), "--rows", str(rows_file),
        "--dsn", dsn, "--dataset", dataset, "--workdir", str(pipelines),
        "--result", str(result_file),
    ]  # fmt: skip
    if file_format != "default":
        command += ["--format", file_format]
    marks = stack.workdir / f"marks-{label}"
    marks.mkdir()
    command += ["--marks", str(marks)]
    meter = stack.cpu_meter()
    worker = children.start(command, stack.workdir / f"dlt-{label}.log")
    cpu = meter_window(meter, worker, marks)
    code = children.wait(worker, timeout_s=60)
    if not result_file.exists():
        log = (stack.workdir / f"dlt-{label}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"dlt worker exited with {code} and no report:\n{log}")
    report: dict[str, Any] = json.loads(result_file.read_text())
    if report["error"]:
        raise RuntimeError(f"dlt failed: {report['error']}")
    report["cpu_core_seconds"] = cpu
    report["machine_busy_before_pct"] = busy_before
    report["rows_per_s"] = report["rows"] / report["seconds"]
    asyncio.run(drop_schema(stack.dsn, dataset))
    return report


# --- profile -----------------------------------------------------------------------------


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    raise SystemExit("--profile needs py-spy: .venv/bin/python -m pip install py-spy")


def summarize_profile(raw: Path, top: int = 30) -> dict[str, Any]:
    """Where the transform process spent its CPU: per function (inclusive and self, line
    numbers folded away) and per area, from py-spy's collapsed stacks. Start-up (imports)
    is left out; idle time is not sampled (py-spy without --idle), so shares are of busy
    time. Native frames (``--native``) show what asyncpg's and uvloop's C code does."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit() or "_find_and_load" in stack:
            continue
        stacks.append(([_LINE.sub(")", frame) for frame in stack.split(";")], int(samples)))
    total = sum(n for _, n in stacks)
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        areas[_area(frames)] += count
    scale = 100.0 / total if total else 0.0

    def ranked(counter: Counter[str], keep: Callable[[str], bool]) -> list[tuple[str, float]]:
        return [(name, round(n * scale, 1)) for name, n in counter.most_common() if keep(name)]

    def python_code(frame: str) -> bool:
        """Python functions below the loop's trunk (the C frames of uvloop and the
        interpreter, and the worker's start-up, are on every stack and say nothing)."""
        return ".py)" in frame and not any(t in frame for t in _TRUNK)

    return {
        "samples": total,
        "areas": ranked(areas, lambda _: True),
        "inclusive": ranked(inclusive, python_code)[:top],
        "self": ranked(own, lambda _: True)[:top],
    }


_TRUNK = ("transform_worker.py", "asyncio/runners.py", "TransformConsumer.run ")
_REPOSITORY = "transform/repository/"
"""Frames in the write path (the ``ponte.transform.repository`` package)."""
_LINE = re.compile(r":\d+\)$")

AREAS: list[tuple[str, Callable[[str], bool]]] = [
    ("garbage collector (gc)", lambda f: f.startswith(("gc_collect", "collect ("))),
    ("outbox relay: read back, produce to Kafka, delete", lambda f: "publish_pending" in f),
    ("outbox insert (add_messages)", lambda f: "add_messages" in f),
    ("change messages (_change_message)", lambda f: "_change_message" in f),
    ("decode: pydantic RawEvent", lambda f: "model_validate_json" in f),
    ("decode: normalize/parsers/mapping", lambda f: "Decoder.decode" in f),
    ("repository: asyncpg round trips", lambda f: "asyncpg" in f),
    ("repository: python", lambda f: _REPOSITORY in f),
    ("processor: metrics, rejections, unmapped", lambda f: "processor.py" in f),
    ("consumer: Kafka fetch, offset commit (aiokafka)", lambda f: "aiokafka" in f),
    ("event loop: socket I/O, driver callbacks", lambda f: "uvloop" in f or "loop.c" in f),
]  # fmt: skip
"""Areas in priority order: a sample belongs to the first whose test matches any frame
of its stack (so the relay's Kafka produce counts as relay, not as Kafka, and a garbage
collection counts as gc wherever it struck). The repository's asyncpg test only applies
to stacks inside the repository; other asyncpg work falls to the area above it."""


def _area(frames: list[str]) -> str:
    in_repository = any(_REPOSITORY in f for f in frames)
    for name, test in AREAS:
        if name.startswith("repository: asyncpg") and not in_repository:
            continue
        if any(test(frame) for frame in frames):
            return name
    return "other"


# --- report ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError, ValueError):
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def machine_busy_pct(seconds: float = 2.0) -> float:
    """How busy the machine is right now, in % of one core: measured before each run, when
    nothing of ours is working, it is other people's load, which makes a run noisy."""
    before = _machine_ticks()
    time.sleep(seconds)
    return 100.0 * (_machine_ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds


def settle(plan: Plan) -> float:
    """The machine's load before a run, after waiting (``--wait-quiet``) for it to drop."""
    deadline = time.monotonic() + plan.wait_quiet_s
    busy = machine_busy_pct()
    while busy > QUIET_PCT and time.monotonic() < deadline:
        print(f"    machine busy ({busy:.0f}% of a core), waiting ...", flush=True)
        time.sleep(10)
        busy = machine_busy_pct()
    return busy


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("ponte", "dlt", "asyncpg", "aiokafka", "pydantic", "uvloop", "psycopg2-binary"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def postgres_version(dsn: str) -> str:
    async def fetch() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    return asyncio.run(fetch())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_per_row(run: dict[str, Any], whose: str) -> float:
    """CPU microseconds per row written, of the measured process (``cpu_seconds``) or of
    PostgreSQL: what a row costs, which other load on the machine barely changes."""
    used = run["cpu_seconds"] if whose == "cpu_seconds" else run["cpu_core_seconds"][whose]
    return 1e6 * used / run["rows"] if run["rows"] else float("nan")


def pct(core_seconds: float, seconds: float) -> float:
    return 100.0 * core_seconds / seconds if seconds else 0.0


def pg_split(cpu: dict[str, float], seconds: float) -> str:
    """PostgreSQL's CPU in % of one core. Only the total is printed: a backend that exits
    between the worker's last commit and the meter's last sample moves from ``queries``
    to ``exited`` (the split stays in the JSON, to read with that in mind)."""
    return f"pg {pct(cpu['postgres'], seconds):3.0f}"


def transform_line(run: dict[str, Any]) -> str:
    s = run["seconds"]
    cpu = run["cpu_core_seconds"]
    other = cpu["machine"] - run["cpu_seconds"] - cpu["postgres"] - cpu["broker"]
    return (
        f"{run['rows']:>8,} rows {run['events']:>7,} events in {s:6.2f}s "
        f"{run['rows_per_s']:>8,.0f} rows/s {run['events_per_s']:>7,.0f} events/s  "
        f"CPU% transform {pct(run['cpu_seconds'], s):3.0f} {pg_split(cpu, s)} "
        f"broker {pct(cpu['broker'], s):2.0f} other {pct(other, s):3.0f} "
        f"(before {run['machine_busy_before_pct']:.0f})  "
        f"peak RSS {run['peak_rss_kib'] / 1024:,.0f} MiB\n"
        f"          events/s by quarter of the run: "
        + " ".join(f"{rate:,.0f}" for rate in run["events_per_s_by_quarter"])
        + f"; rows read by sequential scans {run['scans']['seq_rows_read']:,} "
        f"(auto-analysed: {', '.join(run['scans']['autoanalyzed']) or 'none'})"
        + f"\n          garbage collector {sum(run['gc_seconds']):.2f}s "
        f"({pct(sum(run['gc_seconds']), run['cpu_seconds']):.0f}% of the transform's CPU; "
        f"gen2 {run['gc_seconds'][2]:.2f}s in {run['gc_collections'][2]} collections)"
    )


def dlt_line(run: dict[str, Any]) -> str:
    s = run["seconds"]
    cpu = run["cpu_core_seconds"]
    other = cpu["machine"] - run["cpu_seconds"] - cpu["postgres"] - cpu["broker"]
    steps = " ".join(f"{k} {v:.1f}s" for k, v in run["step_seconds"].items() if k != "run")
    return (
        f"{run['rows']:>8,} rows in {s:6.2f}s {run['rows_per_s']:>8,.0f} rows/s  "
        f"CPU% dlt {pct(run['cpu_seconds'], s):3.0f} {pg_split(cpu, s)} "
        f"other {pct(other, s):3.0f} (before {run['machine_busy_before_pct']:.0f})  "
        f"peak RSS {run['peak_rss_kib'] / 1024:,.0f} MiB  ({steps})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    # Ctrl-C and kill both unwind through the finally blocks that stop what was started
    # (SIGINT too: a shell's background job starts with it ignored).
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    print(f"generating {plan.events:,} raw events ...", flush=True)
    dataset = generate(plan.events, plan.seed)
    print(
        f"  {len(dataset.events):,} events -> {dataset.total_rows:,} CRM rows expected "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(dataset.expected_rows.items()))})",
        flush=True,
    )
    if not plan.quick and dataset.total_rows < FULL_MIN_ROWS:
        raise SystemExit(
            f"a full run needs at least {FULL_MIN_ROWS:,} rows; raise --events "
            f"({dataset.total_rows:,} now)"
        )
    children = Children(grace_s=10)
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(),
        "command": plan.command,
        "plan": plan.__dict__,
        "machine": machine(),
        "versions": versions(),
        "git": git_state(),
        "dataset": {
            "events": len(dataset.events),
            "expected_rows": dict(dataset.expected_rows),
            "total_rows": dataset.total_rows,
            "source_rows": dict(dataset.source_rows),
            "references": dict(dataset.references),
        },
        "transform": [],
        "dlt": {fmt: [] for fmt in plan.dlt_formats},
    }
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ponte-bench-transform-") as scratch,
            embedded_stack() as (broker, database),
        ):
            workdir = Path(scratch)
            settings = stack_settings(
                broker,
                database,
                transform_batch_size=plan.batch_size,
                raw_topic_partitions=plan.partitions,
                log_level="WARNING",
            )
            stack = Stack(broker, database, settings, workdir)
            db.migrate(settings)
            results["versions"]["postgresql"] = postgres_version(stack.dsn)
            print(f"producing to {settings.raw_topic} ({plan.partitions} partitions) ...",
                  flush=True)  # fmt: skip
            produce_s = asyncio.run(produce(settings, dataset))
            print(f"  produced in {produce_s:.1f}s (not timed)", flush=True)
            rows_file = workdir / "rows.json"
            rows_file.write_text(json.dumps(dataset.roots_by_table(), ensure_ascii=False))
            for index in range(1, plan.repeat + 1):
                print(f"run {index}/{plan.repeat}", flush=True)
                run = run_transform(stack, plan, dataset, children, f"r{index}")
                results["transform"].append(run)
                print(f"  ponte {transform_line(run)}", flush=True)
                for problem in run["problems"]:
                    print(f"    PROBLEM {problem}", flush=True)
                for fmt in plan.dlt_formats:
                    dlt_run = run_dlt(stack, plan, rows_file, fmt, children, f"r{index}_{fmt}")
                    results["dlt"][fmt].append(dlt_run)
                    print(f"  dlt[{fmt}] {dlt_line(dlt_run)}", flush=True)
            if plan.profile:
                print("profiled run (py-spy, not counted) ...", flush=True)
                RESULTS_DIR.mkdir(exist_ok=True)
                raw = RESULTS_DIR / f"transform-{stamp}.pyspy.txt"
                run = run_transform(stack, plan, dataset, children, "profile", profile_to=raw)
                results["profile"] = {
                    "run": run,
                    "raw": str(raw.relative_to(REPO_DIR)),
                    **summarize_profile(raw),
                }
                print(f"  ponte {transform_line(run)}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    return report(plan, results, stamp)


def report(plan: Plan, results: dict[str, Any], stamp: str) -> int:
    runs = results["transform"]
    baseline = plan.dlt_formats[0]
    medians = {
        "transform_rows_per_s": median([r["rows_per_s"] for r in runs]),
        "transform_events_per_s": median([r["events_per_s"] for r in runs]),
        "transform_seconds": median([r["seconds"] for r in runs]),
        "transform_peak_rss_mib": median([r["peak_rss_kib"] / 1024 for r in runs]),
        "transform_cpu_pct": median([pct(r["cpu_seconds"], r["seconds"]) for r in runs]),
        "transform_cpu_us_per_row": median([cpu_per_row(r, "cpu_seconds") for r in runs]),
        "transform_pg_cpu_us_per_row": median([cpu_per_row(r, "postgres") for r in runs]),
    }
    for fmt, dlt_runs in results["dlt"].items():
        medians[f"dlt_{fmt}_cpu_us_per_row"] = median(
            [cpu_per_row(r, "cpu_seconds") for r in dlt_runs]
        )
        medians[f"dlt_{fmt}_pg_cpu_us_per_row"] = median(
            [cpu_per_row(r, "postgres") for r in dlt_runs]
        )
        medians[f"dlt_{fmt}_rows_per_s"] = median([r["rows_per_s"] for r in dlt_runs])
        medians[f"dlt_{fmt}_seconds"] = median([r["seconds"] for r in dlt_runs])
        medians[f"dlt_{fmt}_peak_rss_mib"] = median([r["peak_rss_kib"] / 1024 for r in dlt_runs])
    ratio = medians["transform_rows_per_s"] / medians[f"dlt_{baseline}_rows_per_s"]
    medians["ratio_vs_baseline"] = ratio
    problems = sorted({p for r in runs for p in r["problems"]})
    results["medians"] = medians
    results["target"] = {"ratio": TARGET_RATIO, "met": ratio >= TARGET_RATIO}
    results["problems"] = problems
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"transform-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))

    print()
    print(f"medians over {len(runs)} run(s), {results['dataset']['events']:,} events, "
          f"{runs[0]['rows'] if runs else 0:,} rows")  # fmt: skip
    print(f"  ponte transform  {medians['transform_rows_per_s']:>10,.0f} rows/s "
          f"{medians['transform_events_per_s']:>9,.0f} events/s  "
          f"peak RSS {medians['transform_peak_rss_mib']:,.0f} MiB  CPU per row: "
          f"{medians['transform_cpu_us_per_row']:.0f} us + PostgreSQL "
          f"{medians['transform_pg_cpu_us_per_row']:.0f} us")  # fmt: skip
    for fmt in results["dlt"]:
        print(f"  dlt [{fmt:>7}]    {medians[f'dlt_{fmt}_rows_per_s']:>10,.0f} rows/s "
              f"{'':>19}  peak RSS {medians[f'dlt_{fmt}_peak_rss_mib']:,.0f} MiB  "
              f"CPU per row: {medians[f'dlt_{fmt}_cpu_us_per_row']:.0f} us + PostgreSQL "
              f"{medians[f'dlt_{fmt}_pg_cpu_us_per_row']:.0f} us")  # fmt: skip
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"  ratio ponte/dlt[{baseline}] {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x: {verdict})")
    if "profile" in results:
        print("\nwhere the transform's busy time goes (py-spy, % of samples):")
        for name, share in results["profile"]["areas"]:
            print(f"  {share:5.1f}%  {name}")
        print("  top functions (inclusive):")
        for name, share in results["profile"]["inclusive"][:20]:
            print(f"  {share:5.1f}%  {name}")
    if problems:
        print("\nCORRECTNESS PROBLEMS:")
        for problem in problems:
            print(f"  {problem}")
    print(f"\nresults: {path.relative_to(REPO_DIR)}")
    return 0 if ratio >= TARGET_RATIO and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
