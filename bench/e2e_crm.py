"""The CRM end of ``bench/e2e.py``: the HubSpot STAND-IN (``tests/stand_ins/hubspot.py``,
not HubSpot) in a process of its own, noting when each record arrived.

Its own process, so a receipt is timed by a loop that does nothing else: in the
orchestrator's or the load generator's loop, a timestamp would wait behind their work and
bill Ponte for it. The time is taken when a batch upsert's body has fully arrived
(``time.time()``, wall clock, comparable with the generator's in another process), before
the stand-in parses or stores it; so the stand-in's own processing is not counted.

The stand-in's rate limit is set far above what the benchmark sends (``--limit`` calls a
second): this measures Ponte, not HubSpot's ten-second limit.

    python bench/e2e_crm.py --port 8123 [--limit 100000]

``GET /bench/receipts?prefix=P``: ``{external id: first receipt time}`` for the ids
starting with ``P`` (a batch re-sent after a lost answer keeps its first time).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI

from tests.stand_ins.hubspot import HubSpotState, create_stand_in

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ReceiptRecorder:
    """ASGI middleware: for every batch upsert the stand-in accepted (200, or 207 for the
    inputs it took: this benchmark refuses none), the time its body arrived, per input id.

    Pure ASGI rather than a Starlette ``BaseHTTPMiddleware``: the body is seen as it
    streams past, without buffering the response or a second task per request."""

    def __init__(self, app: ASGIApp, receipts: dict[str, float]) -> None:
        self._app = app
        self._receipts = receipts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/batch/upsert"):
            await self._app(scope, receive, send)
            return
        chunks: list[bytes] = []
        arrived = 0.0
        status = 0

        async def receiving() -> Message:
            nonlocal arrived
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    arrived = time.time()
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self._app(scope, receiving, sending)
        if status in (200, 207):
            for item in orjson.loads(b"".join(chunks)).get("inputs", []):
                self._receipts.setdefault(item["id"], arrived)


def create_app(limit: int) -> ASGIApp:
    state = HubSpotState(limit=limit, interval_s=1.0)
    receipts: dict[str, float] = {}
    stand_in: FastAPI = create_stand_in(state)

    @stand_in.get("/bench/receipts")
    async def read_receipts(prefix: str = "") -> dict[str, float]:
        return {k: t for k, t in receipts.items() if k.startswith(prefix)}

    @stand_in.get("/bench/stats")
    async def stats() -> dict[str, int]:
        """Calls the stand-in refused (429), to show its limit was never the bottleneck."""
        return {"rate_limited": state.rate_limited, "records": len(receipts)}

    return ReceiptRecorder(stand_in, receipts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--limit", type=int, default=100_000, help="calls per second")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.limit),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
