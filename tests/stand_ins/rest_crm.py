"""A STAND-IN for "a CRM with a plain REST API", for tests: not any real CRM.

Shaped after Pipedrive's v1 API (records under ``{"success": true, "data": ...}``, search
answers ``data.items[].item``), with the auth of many small CRMs: a login call that issues
a bearer token with an ``expires_in``, and 401 for an expired or unknown token.

- ``POST /v1/auth/login`` ``{"email", "password"}`` -> ``{"data": {"token", "expires_in"}}``
- ``POST /v1/{object_type}`` create -> 201 ``{"data": {"id": ..., ...}}``
- ``PUT /v1/{object_type}/{id}`` update (404 when absent), ``GET`` read, ``DELETE``
- ``GET /v1/{object_type}/search?term=..&fields=cnpj&exact_match=true&start=0&limit=..``
  -> ``{"data": {"items": [{"result_score": 1, "item": {"id", "name", "email",
  "custom_fields": [values]}}]}, "additional_data": {"pagination": {"start", "limit",
  "more_items_in_collection", "next_start"}}}``: Pipedrive's shape, where an item lists
  the record's custom field values, not their names. The field is looked up at the top
  level or in ``custom_fields``.

Misbehaviours a test switches on (``RestCrmState``): tokens that expire after
``token_ttl_s``; ``revoke_tokens()`` (the next call answers 401); creates that save and
then answer 500 (``saved_then_fail``); creates that answer without an id
(``create_returns_no_id``); a slow search (``search_delay_s``); 429 with Retry-After
(``rate_limit_next``); records refused with 400 (``refuse_values``); a search that
matches substrings, case-insensitively, whatever ``exact_match`` says
(``substring_search``: Django's ``icontains``, as many CRMs' filters behave); small search
pages (``search_page_size``). ``writes`` logs every accepted write in order; ``add``
puts a record in by hand, with the id a test chooses.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class RestCrmState:
    email: str = "ponte@example.com"
    password: str = "s3cret"
    token_ttl_s: float = 3600.0
    tokens: dict[str, float] = field(default_factory=dict)
    """token -> monotonic expiry."""
    logins: int = 0
    unauthorized: int = 0
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """object type -> id -> record."""
    writes: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    """Every accepted write, in order: (operation, object type, id, body)."""
    calls: list[tuple[str, str]] = field(default_factory=list)
    """Every call after auth: (method, path)."""
    saved_then_fail: int = 0
    """The next N creates save the record and then answer 500."""
    create_returns_no_id: bool = False
    rate_limit_next: int = 0
    """The next N calls answer 429 with Retry-After."""
    retry_after_s: float = 1.0
    rate_limited: int = 0
    refuse_values: set[str] = field(default_factory=set)
    search_delay_s: float = 0.0
    """A slow search index: lets two concurrent lookups of one key overlap."""
    substring_search: bool = False
    search_page_size: int = 100
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(5001))

    def add(self, object_type: str, record: dict[str, Any], record_id: int) -> dict[str, Any]:
        """A record typed into the CRM by hand (not through the API, not in ``writes``)."""
        stored = {**record, "id": record_id}
        self.records.setdefault(object_type, {})[str(record_id)] = stored
        return stored

    def revoke_tokens(self) -> None:
        """Every token issued so far is expired (the next call with one answers 401)."""
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    def find(
        self, object_type: str, field_name: str, value: str, *, exact: bool = True
    ) -> list[dict[str, Any]]:
        def has(record: dict[str, Any]) -> bool:
            found = record.get(field_name, (record.get("custom_fields") or {}).get(field_name))
            if found is None:
                return False
            return str(found) == value if exact else value.casefold() in str(found).casefold()

        return [record for record in self.records.get(object_type, {}).values() if has(record)]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


def create_stand_in(state: RestCrmState) -> FastAPI:
    app = FastAPI(title="REST CRM stand-in (not a real CRM)")

    def gate(request: Request) -> JSONResponse | None:
        """Auth, then injected rate limits; None: go on."""
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ")
        if not header.startswith("Bearer ") or state.tokens.get(token, 0.0) < time.monotonic():
            state.unauthorized += 1
            return _error(401, "unauthorized: token expired or unknown")
        state.calls.append((request.method, request.url.path))
        if state.rate_limit_next:
            state.rate_limit_next -= 1
            state.rate_limited += 1
            return _error(429, "too many requests", {"Retry-After": f"{state.retry_after_s:g}"})
        return None

    def refused(body: dict[str, Any]) -> JSONResponse | None:
        flat = {**body, **(body.get("custom_fields") or {})}
        for name, value in flat.items():
            if str(value) in state.refuse_values:
                return _error(400, f"{name}: invalid value {value!r}")
        return None

    @app.post("/v1/auth/login")
    async def login(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("email") != state.email or body.get("password") != state.password:
            return _error(401, "wrong e-mail or password")
        state.logins += 1
        token = secrets.token_urlsafe(16)
        state.tokens[token] = time.monotonic() + state.token_ttl_s
        return JSONResponse(
            {"success": True, "data": {"token": token, "expires_in": state.token_ttl_s}}
        )

    @app.get("/v1/{object_type}/search")
    async def search(
        object_type: str,
        request: Request,
        term: str,
        fields: str,
        exact_match: bool = False,
        start: int = 0,
        limit: int | None = None,
    ) -> JSONResponse:
        if (denied := gate(request)) is not None:
            return denied
        if not exact_match and not state.substring_search:
            return _error(400, "the stand-in only implements exact_match=true")
        found = state.find(object_type, fields, term, exact=not state.substring_search)
        if state.search_delay_s:  # answered late, with what was there when asked
            await asyncio.sleep(state.search_delay_s)
        size = min(limit or state.search_page_size, state.search_page_size)
        page = found[start : start + size]
        more = start + size < len(found)
        items = [
            {
                "result_score": 1.0,
                "item": {
                    "id": r["id"],
                    "name": r.get("name"),
                    "email": r.get("email"),
                    "custom_fields": [str(v) for v in (r.get("custom_fields") or {}).values()],
                },
            }
            for r in page
        ]
        pagination = {"start": start, "limit": size, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + size
        return JSONResponse(
            {
                "success": True,
                "data": {"items": items},
                "additional_data": {"pagination": pagination},
            }
        )

    @app.post("/v1/{object_type}")
    async def create(object_type: str, request: Request) -> JSONResponse:
        if (denied := gate(request)) is not None:
            return denied
        body = await request.json()
        if (refusal := refused(body)) is not None:
            return refusal
        record = {**body, "id": next(state.ids)}
        state.records.setdefault(object_type, {})[str(record["id"])] = record
        state.writes.append(("create", object_type, str(record["id"]), body))
        if state.saved_then_fail:
            state.saved_then_fail -= 1
            return _error(500, "internal error")  # ... but the record is saved
        if state.create_returns_no_id:
            return JSONResponse({"success": True}, status_code=201)
        return JSONResponse({"success": True, "data": record}, status_code=201)

    @app.put("/v1/{object_type}/{record_id}")
    async def update(object_type: str, record_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request)) is not None:
            return denied
        record = state.records.get(object_type, {}).get(record_id)
        if record is None:
            return _error(404, f"{object_type} {record_id} not found")
        body = await request.json()
        if (refusal := refused(body)) is not None:
            return refusal
        record.update(body)
        state.writes.append(("update", object_type, record_id, body))
        return JSONResponse({"success": True, "data": record})

    @app.get("/v1/{object_type}/{record_id}")
    async def read(object_type: str, record_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request)) is not None:
            return denied
        record = state.records.get(object_type, {}).get(record_id)
        if record is None:
            return _error(404, f"{object_type} {record_id} not found")
        return JSONResponse({"success": True, "data": record})

    @app.delete("/v1/{object_type}/{record_id}")
    async def delete(object_type: str, record_id: str, request: Request) -> JSONResponse:
        if (denied := gate(request)) is not None:
            return denied
        if state.records.get(object_type, {}).pop(record_id, None) is None:
            return _error(404, f"{object_type} {record_id} not found")
        state.writes.append(("delete", object_type, record_id, {}))
        return JSONResponse({"success": True, "data": {"id": int(record_id)}})

    return app
