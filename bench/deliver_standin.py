"""The HubSpot stand-in (``tests/stand_ins/hubspot.py``, not HubSpot) served on loopback in
its own process for ``bench/deliver.py``, with the receipt time of every write.

    .venv/bin/python bench/deliver_standin.py --port 8123 --limit 100 --interval 10

The stand-in itself is unchanged: it enforces the rolling limit and counts 429s. This
process only adds what the benchmark reads: each accepted write is stamped with the wall
clock (``time.time()``, comparable with the producer's stamp in the same machine) when the
stand-in records it, and every answer's status is counted by path, with the arrival time
of each accepted call, so that the calls in the busiest window can be counted.
``GET /_bench/count`` is cheap (polled while the run drains); ``GET /_bench/stats``
returns everything once at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.stand_ins.hubspot import (
    HubSpotState,
    create_stand_in,
)


class StampedWrites(list[tuple[str, str, dict[str, Any]]]):
    """The stand-in's write log, with the time each write was recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[float] = []

    def append(self, item: tuple[str, str, dict[str, Any]]) -> None:
        super().append(item)
        self.received.append(time.time())


def create_bench_stand_in(state: HubSpotState, writes: StampedWrites) -> FastAPI:
    app = create_stand_in(state)
    statuses: Counter[str] = Counter()
    accepted_at: list[float] = []
    call_sizes: Counter[int] = Counter()
    """Inputs per accepted upsert call -> how many calls had that many."""

    async def count(request: Request, call_next: RequestResponseEndpoint) -> Response:
        upsert = request.url.path.endswith("/batch/upsert")
        inputs = len(json.loads(await request.body()).get("inputs", [])) if upsert else 0
        response = await call_next(request)
        if request.url.path.startswith("/crm/"):
            statuses[f"{request.method} {response.status_code}"] += 1
            if response.status_code < 400:
                accepted_at.append(time.time())
                if upsert:
                    call_sizes[inputs] += 1
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=count)

    @app.get("/_bench/count")
    async def bench_count() -> dict[str, int]:
        return {
            "records": sum(len(records) for records in state.objects.values()),
            "rate_limited": state.rate_limited,
        }

    @app.get("/_bench/stats")
    async def bench_stats() -> dict[str, Any]:
        return {
            "limit": state.limit,
            "interval_s": state.interval_s,
            "rate_limited": state.rate_limited,
            "statuses": dict(statuses),
            "accepted_at": accepted_at,
            "call_sizes": dict(sorted(call_sizes.items())),
            "writes": [
                [external, properties.get("ponte_produced_at"), received]
                for (_, external, properties), received in zip(writes, writes.received, strict=True)
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="HubSpot stand-in for bench/deliver.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--limit", type=int, default=100, help="Calls per interval.")
    parser.add_argument("--interval", type=float, default=10.0, help="Seconds.")
    args = parser.parse_args()
    writes = StampedWrites()
    state = HubSpotState(limit=args.limit, interval_s=args.interval, writes=writes)
    uvicorn.run(
        create_bench_stand_in(state, writes),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
