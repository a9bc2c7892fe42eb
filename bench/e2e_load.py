"""The sender of ``bench/e2e.py``: pre-signed ERP webhooks, open loop, one outcome per request.

The approach of ``openloop.py`` (request *i* is due at ``start + i / rate`` whatever
happened before, so a stall is not hidden by a polite generator: no coordinated
omission), with one difference: the end-to-end figures need each request's own times,
not a summary, to pair them with the CRM's receipt of the record it carried. So for every
request this writes its due time, the time its answer arrived and the status, as wall
clock (``time.time()`` terms, comparable with the CRM stand-in's receipts in another
process). Times are taken with ``perf_counter`` and shifted once by the offset between
the two clocks at start: the loop's own clock is too coarse under uvloop.

Also ``openloop.py``'s ``lag``: how late this generator itself sent, so a slow generator
is not mistaken for a slow system.

    python bench/e2e_load.py --url URL --requests FILE --rate 1000 --seconds 12 --out FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from openloop import percentile
from signed_requests import read_requests


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    outcome: list[Any],
) -> None:
    """Fill ``outcome`` = [due, answered, status] (status: the HTTP code, or the error)."""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            status: int | str = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        status = type(error).__name__
    outcome[1] = time.perf_counter()
    outcome[2] = status


async def run(
    url: str, requests_file: Path, rate: float, seconds: float, timeout_s: float
) -> dict[str, Any]:
    total = int(rate * seconds)
    prepared = [
        (r.body, r.headers())
        for _, r in zip(range(total), read_requests(requests_file), strict=False)
    ]
    if len(prepared) < total:
        raise SystemExit(f"{requests_file} holds {len(prepared)} requests; {total} needed")
    outcomes: list[list[Any]] = [[0.0, 0.0, "not sent"] for _ in prepared]
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.05
        for index, (body, headers) in enumerate(prepared):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - due)
            outcomes[index][0] = due
            task = asyncio.create_task(_send(session, url, body, headers, outcomes[index]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    to_wall = time.time() - time.perf_counter()
    lag_sorted = sorted(lags)
    return {
        "rate": rate,
        "start": start + to_wall,
        "requests": [
            [due + to_wall, answered + to_wall if answered else None, status]
            for due, answered, status in outcomes
        ],
        "generator_lag_p99_ms": percentile(lag_sorted, 0.99) * 1000,
        "generator_lag_max_ms": (lag_sorted[-1] if lag_sorted else 0.0) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=Path, required=True, help="signed requests file")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True, help="how long to send")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request seconds")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the outcomes")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    result = runner(run(args.url, args.requests, args.rate, args.seconds, args.timeout))
    args.out.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
