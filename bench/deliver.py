"""Benchmark the deliver service against HubSpot's rate limit, and print the figures.

    .venv/bin/python bench/deliver.py            # full: 70,000 records at 1,000/s, 3 repeats
    .venv/bin/python bench/deliver.py --quick    # 25,000 records (~25 s), 1 repeat

Exits 0 when the median sustained rate is at least ``TARGET_SHARE`` of the ceiling with
no record lost, no 429 and no dead letter in any run; 1 otherwise.

What runs, per repeat:
- the embedded stack (``ponte.shared.embedded``: Tansu broker and a throwaway PostgreSQL
  on loopback), migrated, started once; each repeat has its own changes topic, consumer
  group, dead-letter topic, source and target, so nothing carries over;
- the HubSpot stand-in (``tests/stand_ins/hubspot.py``, not HubSpot) in its own uvicorn
  process (``deliver_standin.py``), enforcing ``--limit`` calls per ``--interval`` s as a
  rolling window (429 past it) and 100 inputs per call, stamping each write's receipt;
- the real deliver service, ``ponte deliver`` as a subprocess configured by environment
  (one ``kind: hubspot`` target, the documented 100 requests per 10 s, concurrency 4);
- an open-loop producer in this process: change events in the format the transform
  publishes (keyed entity/source/key), one new record each, at ``--rate`` per second,
  each stamped with its production time. It does not slow down when deliver falls behind.

The ceiling is what the stand-in's limit allows: ``limit x 100 inputs / interval`` records
per second (1,000/s for HubSpot's 100 per 10 s), read from the stand-in that ran. The
rolling window allows a burst of ``limit`` calls from a standing start, so the sustained
rate is counted in the steady state: receipts in the whole intervals from one interval
after production started until it stopped (half-open, so that the limit allows exactly
``limit`` calls in each: a window of a whole number of intervals has exactly the
ceiling, wherever it starts; 60 s in the full run, 10 s in the quick one). The default
offered rate is the ceiling itself, so the service is saturated once the first window's
burst is spent: the rate it then sustains is its own, and the backlog shows in the
latencies. Latency is from the production stamp to the stand-in's receipt of the write
(the CRM's acknowledgement), over every record.

Also counted: 429s (the stand-in's own count), the calls accepted and their mean inputs,
the most calls the stand-in accepted in any interval (at most the limit, or there were
429s), dead letters (the topic's end offsets) and rows in ``deliveries`` by state; the
CPU of the deliver process. Results go to ``bench/results/deliver-<timestamp>.json``;
docs/benchmarks-deliver.md records a reference run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from ponte.shared import db, kafka
from ponte.shared.embedded import embedded_stack, free_port
from ponte.shared.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable

sys.path.insert(0, str(BENCH_DIR))
from common import Children, git_state, raise_keyboard_interrupt, stack_settings  # noqa: E402

TARGET_SHARE = 0.90
"""The sustained rate must be at least this share of the ceiling."""
INPUTS_PER_CALL = 100
"""HubSpot's batch upsert limit (the stand-in answers 400 past it)."""
DRAIN_TIMEOUT_S = 120.0
"""After production stops, the service has this long to deliver the rest."""
TICK_S = 0.01
"""The open-loop producer sends what is due every this often."""


@dataclass
class Plan:
    """What to run, from the command line (recorded with the results)."""

    records: int
    rate: float
    repeat: int
    limit: int
    interval_s: float
    partitions: int
    quick: bool
    extra_env: dict[str, str] = field(default_factory=dict)
    deliver_command: list[str] = field(default_factory=list)
    command: str = ""


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description="Deliver records/s against HubSpot's limit.")
    parser.add_argument("--quick", action="store_true", help="~25 s smoke run, 1 repeat.")
    parser.add_argument("--records", type=int, help="Records (default 70,000; quick 25,000).")
    parser.add_argument(
        "--rate", type=float, help="Offered records/s (default: the ceiling, 1,000/s)."
    )
    parser.add_argument("--repeat", type=int, help="Runs (default 3; quick 1).")
    parser.add_argument("--limit", type=int, default=100, help="Stand-in calls per interval.")
    parser.add_argument("--interval", type=float, default=10.0, help="Stand-in interval, s.")
    parser.add_argument("--partitions", type=int, default=6, help="Changes topic partitions.")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Extra environment for the deliver service (e.g. PONTE_DELIVER_LINGER_MS=0).",
    )
    parser.add_argument(
        "--deliver-command",
        help="Experiment: run this (a shell-quoted command line) instead of `ponte deliver`, "
        "with the same environment; e.g. a wrapper that swaps a module to compare.",
    )
    args = parser.parse_args(argv)
    ceiling = args.limit * INPUTS_PER_CALL / args.interval
    extra_env = dict(item.split("=", 1) for item in args.env)
    return Plan(
        records=args.records or (25_000 if args.quick else 70_000),
        rate=args.rate or ceiling,
        repeat=args.repeat or (1 if args.quick else 3),
        limit=args.limit,
        interval_s=args.interval,
        partitions=args.partitions,
        quick=args.quick,
        extra_env=extra_env,
        deliver_command=[  # it runs in the run's directory: repository paths made absolute
            str(REPO_DIR / word) if (REPO_DIR / word).exists() else word
            for word in shlex.split(args.deliver_command or "")
        ],
        command=shlex.join([".venv/bin/python", "bench/deliver.py", *(argv or sys.argv[1:])]),
    )


# --- processes ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime+stime of a process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.load(response)


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], timeout_s: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{url}: the process exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError, ValueError):
            get_json(url, timeout_s=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


# --- one run -----------------------------------------------------------------------------


def change_event(source_id: str, number: int) -> dict[str, Any]:
    """A change event as the transform publishes it: one new company record."""
    now = datetime.now(UTC)
    return {
        "entity": "company",
        "source_id": source_id,
        "source_key": f"C{number}",
        "row_id": number + 1,
        "operation": "upsert",
        "changed": ["legal_name", "document", "code"],
        "version": {"at": now.isoformat(), "event_id": f"bench-{number}"},
        "row": {
            "legal_name": f"Empresa {number} Ltda",
            "document": f"{number:014d}",
            # The production stamp rides in a real column, sent as its own property.
            "code": repr(time.time()),
        },
    }


async def produce_open_loop(settings: Settings, plan: Plan, source_id: str) -> tuple[float, float]:
    """Every record at its scheduled time, whatever deliver does; returns (start, end)
    wall-clock times of production."""
    producer = kafka.create_producer(settings)
    await producer.start()
    try:
        started_mono = time.monotonic()
        started = time.time()
        sent = 0
        while sent < plan.records:
            due = min(plan.records, int((time.monotonic() - started_mono) * plan.rate) + 1)
            pending = []
            for number in range(sent, due):
                value = change_event(source_id, number)
                key = f"company/{source_id}/C{number}".encode()
                pending.append(
                    await producer.send(settings.changes_topic, orjson.dumps(value), key=key)
                )
            sent = due
            await asyncio.gather(*pending)
            await asyncio.sleep(max(0.0, started_mono + sent / plan.rate - time.monotonic()))
        await producer.flush()
        return started, time.time()
    finally:
        await producer.stop()


async def dead_letters(settings: Settings) -> int:
    """Messages in the run's dead-letter topic (the sum of its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.deliver_dead_letter_topic) or set()
        if not partitions:
            await consumer.topics()  # refresh metadata once
            partitions = consumer.partitions_for_topic(settings.deliver_dead_letter_topic) or set()
        if not partitions:  # never count "none" for a topic we could not see
            raise RuntimeError(f"{settings.deliver_dead_letter_topic}: no such topic")
        tps = [TopicPartition(settings.deliver_dead_letter_topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def deliveries_by_state(settings: Settings, target_id: str) -> dict[str, int]:
    connection = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        rows = await connection.fetch(
            "SELECT state, count(*) AS n FROM deliveries WHERE target_id = $1 GROUP BY state",
            target_id,
        )
        return {row["state"]: row["n"] for row in rows}
    finally:
        await connection.close()


def write_targets(path: Path, target_id: str, source_id: str, base_url: str, plan: Plan) -> None:
    target = {
        "id": target_id,
        "kind": "hubspot",
        "base_url": base_url,
        "token": "pat-bench-not-a-secret",
        "sources": [source_id],
        "rate_limit": {"requests": plan.limit, "per_seconds": plan.interval_s},
        "concurrency": 4,
        "objects": {
            "company": {
                "object_type": "companies",
                "properties": {
                    "legal_name": "name",
                    "document": "cnpj",
                    "code": "ponte_produced_at",
                },
            }
        },
    }
    path.write_text(yaml.safe_dump({"targets": [target]}))


def run_once(
    settings: Settings, plan: Plan, children: Children, workdir: Path, label: str
) -> dict[str, Any]:
    run_settings = settings.model_copy(
        update={
            "changes_topic": f"bench.changes.{label}",
            "changes_topic_partitions": plan.partitions,
            "deliver_group_id": f"bench-deliver-{label}",
            "deliver_dead_letter_topic": f"bench.deliver.deadletter.{label}",
            "status_topic": f"bench.status.{label}",
        }
    )
    asyncio.run(kafka.ensure_topics(run_settings))
    source_id = f"bench-{label}"
    target_id = f"hs-{label}"
    standin_port, deliver_port = free_port(), free_port()
    standin_url = f"http://127.0.0.1:{standin_port}"
    standin_log = workdir / f"standin-{label}.log"
    standin = children.start(
        [PYTHON, str(BENCH_DIR / "deliver_standin.py"), "--port", str(standin_port),
         "--limit", str(plan.limit), "--interval", str(plan.interval_s)],
        standin_log,
    )  # fmt: skip
    wait_until_ready(f"{standin_url}/_bench/count", standin, 30, standin_log)
    targets_file = workdir / f"targets-{label}.yaml"
    write_targets(targets_file, target_id, source_id, standin_url, plan)
    env = {
        **os.environ,
        "PONTE_KAFKA_BOOTSTRAP": run_settings.kafka_bootstrap,
        "PONTE_DATABASE_URL": run_settings.database_url,
        "PONTE_KAFKA_IDEMPOTENCE": "false",
        "PONTE_KAFKA_REPLICATION_FACTOR": "1",
        "PONTE_CHANGES_TOPIC": run_settings.changes_topic,
        "PONTE_CHANGES_TOPIC_PARTITIONS": str(plan.partitions),
        "PONTE_DELIVER_GROUP_ID": run_settings.deliver_group_id,
        "PONTE_DELIVER_DEAD_LETTER_TOPIC": run_settings.deliver_dead_letter_topic,
        "PONTE_STATUS_TOPIC": run_settings.status_topic,
        "PONTE_TARGETS_FILE": str(targets_file),
        "PONTE_HTTP_PORT": str(deliver_port),
        "PONTE_LOG_LEVEL": "WARNING",
        **plan.extra_env,
    }
    deliver_log = workdir / f"deliver-{label}.log"
    deliver = children.start(
        plan.deliver_command or [str(Path(PYTHON).parent / "ponte"), "deliver"],
        deliver_log,
        env=env,
        cwd=workdir,  # no .env of the checkout
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{deliver_port}/readyz", deliver, 60, deliver_log)
        cpu_before = _cpu_seconds(deliver.pid)
        produced_from, produced_to = asyncio.run(produce_open_loop(run_settings, plan, source_id))
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            if get_json(f"{standin_url}/_bench/count")["records"] >= plan.records:
                break
            if deliver.poll() is not None:
                break
            time.sleep(0.2)
        drained_at = time.time()
        cpu_seconds = _cpu_seconds(deliver.pid) - cpu_before
        time.sleep(1.0)  # let the last batch's deliveries rows land
        stats = get_json(f"{standin_url}/_bench/stats", timeout_s=60)
    finally:
        children.stop(deliver)
        children.stop(standin)
    states = asyncio.run(deliveries_by_state(run_settings, target_id))
    dead = asyncio.run(dead_letters(run_settings))
    return summarize(plan, stats, produced_from, produced_to, drained_at, cpu_seconds,
                     states, dead)  # fmt: skip


def summarize(
    plan: Plan,
    stats: dict[str, Any],
    produced_from: float,
    produced_to: float,
    drained_at: float,
    cpu_seconds: float,
    states: dict[str, int],
    dead: int,
) -> dict[str, Any]:
    first_receipt: dict[str, tuple[float, float]] = {}
    for external, produced_at, received in stats["writes"]:
        if external not in first_receipt:
            first_receipt[external] = (float(produced_at), float(received))
    receipts = sorted(received for _, received in first_receipt.values())
    latencies = sorted(received - produced for produced, received in first_receipt.values())
    interval = float(stats["interval_s"])
    ceiling = stats["limit"] * INPUTS_PER_CALL / interval
    # Whole intervals, half-open: the limit allows exactly ``limit`` calls in each, so the
    # ceiling of such a window is ``ceiling`` per second wherever it starts.
    steady_from = produced_from + interval
    steady_s = interval * max(1, int((produced_to - steady_from) // interval))
    in_steady = sum(1 for at in receipts if steady_from <= at < steady_from + steady_s)
    rate = in_steady / steady_s if steady_s > 0 else float("nan")
    accepted = sorted(stats["accepted_at"])
    busiest, first = 0, 0
    for last, at in enumerate(accepted):
        while at - accepted[first] > interval:
            first += 1
        busiest = max(busiest, last - first + 1)
    upserts = stats["statuses"].get("POST 200", 0) + stats["statuses"].get("POST 207", 0)
    problems = []
    if len(first_receipt) != plan.records:
        problems.append(f"lost: {plan.records - len(first_receipt):,} records never arrived")
    if states.get("delivered", 0) != plan.records or set(states) - {"delivered"}:
        problems.append(f"deliveries rows by state {states} (expected {plan.records:,} delivered)")
    if dead:
        problems.append(f"{dead} dead letters")
    if stats["rate_limited"]:
        problems.append(f"{stats['rate_limited']} answers were 429")
    return {
        "records": plan.records,
        "offered_per_s": plan.rate,
        "produce_seconds": produced_to - produced_from,
        "steady_seconds": steady_s,
        "sustained_per_s": rate,
        "ceiling_per_s": ceiling,
        "interval_s": interval,
        "share_of_ceiling": rate / ceiling,
        "overall_per_s": len(receipts) / (receipts[-1] - produced_from) if receipts else 0.0,
        "drain_seconds": (receipts[-1] - produced_to) if receipts else float("nan"),
        "delivered": len(first_receipt),
        "writes": len(stats["writes"]),
        "rate_limited": stats["rate_limited"],
        "statuses": stats["statuses"],
        "upsert_calls": upserts,
        "inputs_per_call": len(stats["writes"]) / upserts if upserts else 0.0,
        "busiest_window_calls": busiest,
        "records_per_second": per_second(receipts, produced_from),
        "call_sizes": stats["call_sizes"],
        "full_calls_share": stats["call_sizes"].get(str(INPUTS_PER_CALL), 0) / upserts
        if upserts
        else 0.0,
        "latency_p50_s": quantile(latencies, 0.50),
        "latency_p99_s": quantile(latencies, 0.99),
        "latency_max_s": latencies[-1] if latencies else float("nan"),
        "deliveries": states,
        "dead_letters": dead,
        "deliver_cpu_pct": 100.0 * cpu_seconds / (drained_at - produced_from),
        "problems": problems,
    }


def per_second(times: list[float], since: float) -> list[int]:
    """How many of ``times`` fell in each whole second after ``since`` (the timeline)."""
    counts = [0] * (int(max(times, default=since) - since) + 1)
    for at in times:
        counts[max(0, int(at - since))] += 1
    return counts


def quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_line(run: dict[str, Any]) -> str:
    return (
        f"{run['sustained_per_s']:7,.0f} rec/s sustained ({run['share_of_ceiling']:5.1%} of "
        f"{run['ceiling_per_s']:,.0f}) over {run['steady_seconds']:.0f}s  429s "
        f"{run['rate_limited']}  calls {run['upsert_calls']:,} x {run['inputs_per_call']:.1f} "
        f"inputs (busiest {run['interval_s']:g}s: {run['busiest_window_calls']} calls)  "
        f"p50 {run['latency_p50_s']:.2f}s p99 "
        f"{run['latency_p99_s']:.2f}s  drain {run['drain_seconds']:.1f}s  "
        f"deliver CPU {run['deliver_cpu_pct']:.0f}%"
    )


# --- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    children = Children(grace_s=30)
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(),
        "command": plan.command,
        "plan": plan.__dict__,
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "git": git_state(),
        "runs": [],
    }
    print(
        f"{plan.records:,} records offered at {plan.rate:,.0f}/s to a stand-in allowing "
        f"{plan.limit} calls per {plan.interval_s:g}s, {plan.repeat} run(s)",
        flush=True,
    )
    try:
        workdir = RESULTS_DIR / f"deliver-{stamp}"  # logs and targets files, kept
        workdir.mkdir(parents=True)
        with embedded_stack() as (broker, database):
            settings = stack_settings(broker, database, log_level="WARNING")
            db.migrate(settings)
            for index in range(1, plan.repeat + 1):
                label = f"{stamp.replace('-', '')}r{index}"
                run = run_once(settings, plan, children, workdir, label)
                results["runs"].append(run)
                print(f"  run {index}/{plan.repeat}: {run_line(run)}", flush=True)
                for problem in run["problems"]:
                    print(f"    PROBLEM {problem}", flush=True)
            if plan.extra_env or plan.deliver_command:
                print(f"  experiment: {plan.extra_env or ''} {shlex.join(plan.deliver_command)}")
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    return report(plan, results, stamp)


def report(plan: Plan, results: dict[str, Any], stamp: str) -> int:
    runs = results["runs"]

    def median(key: str) -> float:
        return float(statistics.median(run[key] for run in runs))

    medians = {
        key: median(key)
        for key in ("sustained_per_s", "ceiling_per_s", "share_of_ceiling", "rate_limited",
                    "inputs_per_call", "busiest_window_calls", "latency_p50_s", "latency_p99_s",
                    "drain_seconds", "deliver_cpu_pct", "dead_letters")
    }  # fmt: skip
    problems = sorted({problem for run in runs for problem in run["problems"]})
    met = medians["share_of_ceiling"] >= TARGET_SHARE and not problems
    results["medians"] = medians
    results["target"] = {"share": TARGET_SHARE, "met": met}
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"deliver-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))

    print(f"\nmedians over {len(runs)} run(s) of {plan.records:,} records offered at "
          f"{plan.rate:,.0f}/s")  # fmt: skip
    rows = [
        ("sustained rate (steady state)", f"{medians['sustained_per_s']:,.0f} rec/s"),
        ("ceiling (limit x 100 / interval)", f"{medians['ceiling_per_s']:,.0f} rec/s"),
        ("share of the ceiling", f"{medians['share_of_ceiling']:.1%} "
                                 f"(target >= {TARGET_SHARE:.0%})"),
        ("429 answers", f"{medians['rate_limited']:.0f}"),
        ("dead letters", f"{medians['dead_letters']:.0f}"),
        ("inputs per upsert call", f"{medians['inputs_per_call']:.1f}"),
        ("most calls in any interval", f"{medians['busiest_window_calls']:.0f} "
                                       f"(limit {plan.limit})"),
        ("latency produced -> CRM p50", f"{medians['latency_p50_s']:.2f} s"),
        ("latency produced -> CRM p99", f"{medians['latency_p99_s']:.2f} s"),
        ("drain after production stopped", f"{medians['drain_seconds']:.1f} s"),
        ("deliver CPU (% of one core)", f"{medians['deliver_cpu_pct']:.0f}%"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if problems:
        print("\nPROBLEMS:")
        for problem in problems:
            print(f"  {problem}")
    print(f"  target {'met' if met else 'MISSED'}")
    print(f"\nresults: {path.relative_to(REPO_DIR)}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
