"""Open-loop load at a fixed rate, for latency figures free of coordinated omission.

wrk is closed-loop: each connection waits for its answer before sending again, so when the
server stalls the load generator politely stops sending and the stall hides in a handful
of slow samples. Real senders (ERPs, shops) do not wait for each other. Here request *i*
is due at ``start + i / rate`` whatever happened before, and its latency is measured from
that due time, so time spent queued behind a stall (in the server, in the connection
pool, or in this generator falling behind) counts against the server, as a sender would
see it. How far this generator itself fell behind is reported as ``lag`` so a slow
generator is not mistaken for a slow server.

Run by ``bench/ingest.py`` in its own process (so it does not share an event loop with
the orchestration); prints one JSON object on stdout.

    python bench/openloop.py --url URL --requests FILE --rate 1000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from signed_requests import read_requests


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    due: float,
    outcomes: list[tuple[float, float, str]],
) -> None:
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            outcome = str(response.status)
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        outcome = type(error).__name__
    outcomes.append((due, time.perf_counter() - due, outcome))


async def run(
    url: str,
    requests_file: Path,
    rate: float,
    duration_s: float,
    warmup_s: float,
    expected: int,
    max_connections: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Send at ``rate`` for ``warmup_s + duration_s``; the warmup's samples are dropped
    (it opens the connections and lets the server's pools grow to the load)."""
    total = int(rate * (warmup_s + duration_s))
    prepared = [
        (r.body, r.headers())
        for _, r in zip(range(total), read_requests(requests_file), strict=False)
    ]
    if len(prepared) < total:
        raise SystemExit(f"{requests_file} holds {len(prepared)} requests; {total} needed")
    outcomes: list[tuple[float, float, str]] = []
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=max_connections)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: set[asyncio.Task[None]] = set()
        # time.perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        start = time.perf_counter() + 0.05
        for index, (body, headers) in enumerate(prepared):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - due)
            task = asyncio.create_task(_send(session, url, body, headers, due, outcomes))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    measured_from = start + warmup_s
    kept = [(due, latency, outcome) for due, latency, outcome in outcomes if due >= measured_from]
    latencies = sorted(latency for _, latency, outcome in kept if outcome == str(expected))
    statuses = Counter(outcome for _, _, outcome in kept)
    last_done = max((due + latency for due, latency, _ in kept), default=measured_from)
    window = max(last_done - measured_from, 1e-9)
    lag_sorted = sorted(lags[int(rate * warmup_s) :])
    ms = 1000.0
    return {
        "target_rate": rate,
        "duration_s": duration_s,
        "sent": len(kept),
        "ok": len(latencies),
        "achieved_rate": len(latencies) / window,
        "p50_ms": percentile(latencies, 0.50) * ms,
        "p90_ms": percentile(latencies, 0.90) * ms,
        "p99_ms": percentile(latencies, 0.99) * ms,
        "p999_ms": percentile(latencies, 0.999) * ms,
        "max_ms": (latencies[-1] if latencies else 0.0) * ms,
        "errors": len(kept) - len(latencies),
        "statuses": dict(statuses),
        "generator_lag_p99_ms": percentile(lag_sorted, 0.99) * ms,
        "generator_lag_max_ms": (lag_sorted[-1] if lag_sorted else 0.0) * ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=Path, required=True, help="signed requests file")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--expected", type=int, default=202, help="the status that counts as ok")
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request seconds")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    result = runner(
        run(
            args.url,
            args.requests,
            args.rate,
            args.duration,
            args.warmup,
            args.expected,
            args.max_connections,
            args.timeout,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
