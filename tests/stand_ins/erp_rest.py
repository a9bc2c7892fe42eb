"""A STAND-IN for an ERP's REST API, for tests: not any real ERP.

It speaks the shape most ERP REST APIs share for incremental export, which Ponte's pull
connector is configured against (``pulls.example.yaml``):

    GET /api/v1/{resource}?updated_since=<ISO 8601>&page_token=<opaque>&limit=<n>
    Authorization: Bearer <token>

    200 {"data": [records...],
         "paging": {"next_page_token": "<opaque>" | null},
         "sync": {"next_updated_since": "<greatest updated_at of the whole result>"}}

Records are returned in ``(updated_at, codigo)`` order, only those with ``updated_at``
strictly after ``updated_since``; the page token is opaque (base64 of the offset and the
query) and is only valid with the same ``updated_since``. ``?page=N`` (1-based) is
accepted too, for page-number pagination. A missing or wrong token answers 401.

Tests inject failures (``fail_pages``: page number -> status, used once), slow answers
(``delay_s``) and read back every request that arrived (``requests``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class ErpRestState:
    token: str
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """resource -> records (each with ``codigo`` and ``updated_at``)."""
    page_size: int = 2
    fail_pages: dict[int, int] = field(default_factory=dict)
    delay_s: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)
    """Every authorised request's query parameters, with the resource under ``_resource``."""

    def upsert(self, resource: str, record: dict[str, Any]) -> None:
        rows = self.records.setdefault(resource, [])
        rows[:] = [row for row in rows if row["codigo"] != record["codigo"]] + [record]


def _token(offset: int, since: str | None) -> str:
    return base64.urlsafe_b64encode(json.dumps([offset, since]).encode()).decode()


def _offset(token: str, since: str | None) -> int | None:
    try:
        offset, token_since = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        return None
    return int(offset) if token_since == since else None


def create_stand_in(state: ErpRestState) -> FastAPI:
    app = FastAPI(title="ERP REST stand-in (not a real ERP)")

    @app.get("/api/v1/{resource}")
    async def export(resource: str, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {state.token}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        params = dict(request.query_params)
        state.requests.append({"_resource": resource, **params})
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        since = params.get("updated_since")
        limit = int(params.get("limit", state.page_size))
        if "page_token" in params:
            offset = _offset(params["page_token"], since)
            if offset is None:
                return JSONResponse({"error": "invalid page_token"}, status_code=400)
        else:
            offset = (int(params.get("page", "1")) - 1) * limit
        page_number = offset // limit + 1
        if page_number in state.fail_pages:
            status = state.fail_pages.pop(page_number)
            return JSONResponse({"error": "injected failure"}, status_code=status)
        matching = sorted(
            (
                r
                for r in state.records.get(resource, [])
                if since is None or r["updated_at"] > since
            ),
            key=lambda r: (r["updated_at"], r["codigo"]),
        )
        page = matching[offset : offset + limit]
        more = offset + limit < len(matching)
        return JSONResponse(
            {
                "data": page,
                "paging": {"next_page_token": _token(offset + limit, since) if more else None},
                "sync": {
                    "next_updated_since": max((r["updated_at"] for r in matching), default=None)
                },
            }
        )

    return app
