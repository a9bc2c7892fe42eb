"""A STAND-IN for HubSpot's CRM v3 API, for tests and benchmarks: not HubSpot.

It speaks the documented protocol of the calls Ponte makes: batch upsert by a unique
``idProperty`` (at most 100 inputs, else 400), 200 when every input was written, 207 with
``errors[].context.ids`` naming refused inputs, 429 with ``policyName`` and the
``X-HubSpot-RateLimit-*`` headers past the ten-second limit, and batch archive. Tests
inject failures (5xx storms, slow answers, refused values) and read back exactly what
arrived, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class HubSpotState:
    limit: int = 100
    interval_s: float = 10.0
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """object type -> external id -> record (with its HubSpot id)."""
    writes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """Every accepted write, in order: (object type, external id, properties)."""
    calls: deque[float] = field(default_factory=deque)
    rate_limited: int = 0
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer the next calls with (e.g. [503, 503])."""
    refuse_values: set[str] = field(default_factory=set)
    """Property values refused per record (a 207 error), e.g. a bad e-mail."""
    delay_s: float = 0.0
    ids: itertools.count = field(default_factory=lambda: itertools.count(1001))


def create_stand_in(state: HubSpotState) -> FastAPI:
    app = FastAPI(title="HubSpot stand-in (not HubSpot)")

    def rate_headers(remaining: int) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Max": str(state.limit),
            "X-HubSpot-RateLimit-Remaining": str(max(remaining, 0)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(state.interval_s * 1000)),
        }

    async def gate() -> JSONResponse | dict[str, str]:
        now = time.monotonic()
        while state.calls and now - state.calls[0] > state.interval_s:
            state.calls.popleft()
        if len(state.calls) >= state.limit:
            state.rate_limited += 1
            retry = state.interval_s - (now - state.calls[0])
            return JSONResponse(
                {
                    "status": "error",
                    "message": "You have reached your ten_secondly_rolling limit.",
                    "errorType": "RATE_LIMIT",
                    "policyName": "TEN_SECONDLY_ROLLING",
                },
                status_code=429,
                headers={**rate_headers(0), "Retry-After": f"{retry:.3f}"},
            )
        state.calls.append(now)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.fail_next:
            status = state.fail_next.pop(0)
            return JSONResponse(
                {"status": "error", "message": "injected failure"}, status_code=status
            )
        return rate_headers(state.limit - len(state.calls))

    @app.post("/crm/v3/objects/{object_type}/batch/upsert")
    async def upsert(object_type: str, request: Request) -> JSONResponse:
        verdict = await gate()
        if isinstance(verdict, JSONResponse):
            return verdict
        inputs = (await request.json()).get("inputs", [])
        if len(inputs) > 100:
            return JSONResponse({"status": "error", "message": "too many inputs"}, 400)
        results, errors = [], []
        store = state.objects.setdefault(object_type, {})
        for item in inputs:
            external = item["id"]
            properties = item.get("properties", {})
            if any(str(v) in state.refuse_values for v in properties.values()):
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": f"Property values were not valid for {external}",
                        "context": {"ids": [external]},
                    }
                )
                continue
            record = store.get(external)
            new = record is None
            if record is None:
                record = store[external] = {"id": str(next(state.ids)), "properties": {}}
            record["properties"].update(properties)
            state.writes.append((object_type, external, properties))
            results.append({"id": record["id"], "new": new, "properties": record["properties"]})
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
        return JSONResponse(body, status_code=207 if errors else 200, headers=verdict)

    @app.post("/crm/v3/objects/{object_type}/batch/archive")
    async def archive(object_type: str, request: Request) -> JSONResponse:
        verdict = await gate()
        if isinstance(verdict, JSONResponse):
            return verdict
        ids = {item["id"] for item in (await request.json()).get("inputs", [])}
        store = state.objects.setdefault(object_type, {})
        for external in [e for e, r in store.items() if r["id"] in ids]:
            del store[external]
            state.writes.append((object_type, external, {"archived": True}))
        return JSONResponse({}, status_code=204, headers=verdict)

    return app
