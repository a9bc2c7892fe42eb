"""A STAND-IN for HubSpot's CRM v3/v4 API, for tests and benchmarks: not HubSpot.

It speaks the documented protocol of the calls Ponte makes: batch upsert by a unique
``idProperty`` (at most 100 inputs, else 400), 200 when every input was written, 207 with
``errors[].context.ids`` naming refused inputs, 429 with ``policyName`` and the
``X-HubSpot-RateLimit-*`` headers past the ten-second limit, and batch archive. Tests
inject failures (5xx storms, slow answers, refused values) and read back exactly what
arrived, in order.

Also the v4 default association in batch (``{inputs: [{from: {id}, to: {id}}]}``): 400
for a malformed body, more than 100 inputs or a pair of object types without a default
association; otherwise each input whose two records exist is linked (a set: linking twice
changes nothing), the others come back in ``errors`` with a 207; ``results`` carry the
``associationSpec`` (HubSpot's documented unlabelled type ids for the pairs below). And
``GET /crm/v3/objects/{type}/{id}`` with ``properties`` and ``associations`` (404 when
there is no such record). Where HubSpot's exact error wording is not documented, the
messages here are the stand-in's own.
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

DEFAULT_ASSOCIATION_TYPES: dict[tuple[str, str], int] = {
    ("contacts", "companies"): 279,
    ("companies", "contacts"): 280,
    ("deals", "companies"): 341,
    ("companies", "deals"): 342,
    ("deals", "contacts"): 3,
    ("contacts", "deals"): 4,
    ("line_items", "deals"): 20,
    ("deals", "line_items"): 19,
}
"""(from, to) object types -> the unlabelled association type HubSpot documents."""


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
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))
    external_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    """(object type, HubSpot id) -> external id, to find a record by its HubSpot id."""
    associations: set[tuple[str, str, str, str]] = field(default_factory=set)
    """(from type, from id, to type, to id): the links that exist."""
    association_writes: list[tuple[str, str, str, str]] = field(default_factory=list)
    """Every accepted association input, in order (repeats included)."""
    fail_next_associations: list[int] = field(default_factory=list)
    """Statuses to answer the next association calls with (other calls unaffected)."""

    def find(self, object_type: str, hubspot_id: str) -> dict[str, Any] | None:
        external = self.external_ids.get((object_type, hubspot_id))
        record = self.objects.get(object_type, {}).get(external or "")
        return record if record is not None and record["id"] == hubspot_id else None

    def linked(self, object_type: str, hubspot_id: str, other_type: str) -> list[str]:
        """HubSpot ids of ``other_type`` linked to the record, in either direction."""
        ids = {
            to_id
            for from_type, from_id, to_type, to_id in self.associations
            if (from_type, from_id, to_type) == (object_type, hubspot_id, other_type)
        } | {
            from_id
            for from_type, from_id, to_type, to_id in self.associations
            if (to_type, to_id, from_type) == (object_type, hubspot_id, other_type)
        }
        return sorted(ids)


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
                state.external_ids[(object_type, record["id"])] = external
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

    @app.post("/crm/v4/associations/{from_type}/{to_type}/batch/associate/default")
    async def associate_default(from_type: str, to_type: str, request: Request) -> JSONResponse:
        verdict = await gate()
        if isinstance(verdict, JSONResponse):
            return verdict
        if state.fail_next_associations:
            status = state.fail_next_associations.pop(0)
            return JSONResponse(
                {"status": "error", "message": "injected failure"}, status_code=status
            )
        inputs = (await request.json()).get("inputs")
        pairs = [
            (str(item["from"]["id"]), str(item["to"]["id"]))
            for item in inputs or []
            if isinstance(item, dict)
            and isinstance(item.get("from"), dict)
            and isinstance(item.get("to"), dict)
            and "id" in item["from"]
            and "id" in item["to"]
        ]
        if not isinstance(inputs, list) or not inputs or len(pairs) != len(inputs):
            return _bad_request("inputs: each needs from.id and to.id")
        if len(inputs) > 100:
            return _bad_request("too many inputs")
        type_id = DEFAULT_ASSOCIATION_TYPES.get((from_type, to_type))
        if type_id is None:
            return _bad_request(f"no default association from {from_type} to {to_type}")
        results, errors = [], []
        for from_id, to_id in pairs:
            missing = [
                (kind, object_type, hubspot_id)
                for kind, object_type, hubspot_id in (
                    ("fromObjectId", from_type, from_id),
                    ("toObjectId", to_type, to_id),
                )
                if state.find(object_type, hubspot_id) is None
            ]
            if missing:
                kind, object_type, hubspot_id = missing[0]
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": f"No {object_type} record with id {hubspot_id} exists",
                        "context": {kind: [hubspot_id]},
                    }
                )
                continue
            state.associations.add((from_type, from_id, to_type, to_id))
            state.association_writes.append((from_type, from_id, to_type, to_id))
            results.append(
                {
                    "associationSpec": {
                        "associationCategory": "HUBSPOT_DEFINED",
                        "associationTypeId": type_id,
                    },
                    "from": {"id": from_id},
                    "to": {"id": to_id},
                }
            )
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
        return JSONResponse(body, status_code=207 if errors else 200, headers=verdict)

    @app.get("/crm/v3/objects/{object_type}/{hubspot_id}")
    async def read(
        object_type: str, hubspot_id: str, properties: str = "", associations: str = ""
    ) -> JSONResponse:
        verdict = await gate()
        if isinstance(verdict, JSONResponse):
            return verdict
        record = state.find(object_type, hubspot_id)
        if record is None:
            return JSONResponse(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"No {object_type} record with id {hubspot_id}",
                },
                status_code=404,
                headers=verdict,
            )
        held = record["properties"]
        wanted = [name for name in properties.split(",") if name]
        body: dict[str, Any] = {
            "id": record["id"],
            # Without ``properties`` HubSpot returns its defaults; the stand-in, all it holds.
            "properties": {name: held.get(name) for name in wanted} if wanted else dict(held),
            "archived": False,
        }
        linked = {
            other: [
                {"id": other_id, "type": f"{object_type}_to_{other}"}
                for other_id in state.linked(object_type, hubspot_id, other)
            ]
            for other in associations.split(",")
            if other
        }
        if any(linked.values()):
            body["associations"] = {
                other: {"results": results} for other, results in linked.items() if results
            }
        return JSONResponse(body, headers=verdict)

    return app


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "category": "VALIDATION_ERROR", "message": message}, 400
    )
