"""A STAND-IN for the Ploomes API (public-api2.ploomes.com), for tests: not Ploomes.

It speaks the documented subset Ponte uses, OData v4 style: the ``User-Key`` header (401
without the right one); ``GET /{Set}`` with ``$filter`` made of ``eq`` comparisons on
top-level fields and ``OtherProperties/any(o: o/FieldKey eq 'k' and o/StringValue eq 'v')``
joined by ``and``, plus ``$top``, ``$skip``, ``$select`` and ``$expand=OtherProperties``;
``POST /{Set}`` answering the created record (with its ``Id``) in ``{"value": [...]}``;
``PATCH /{Set}({Id})`` (custom fields merged by ``FieldKey``); ``DELETE /{Set}({Id})``; 404
for an unknown Id; 400 with an OData ``error.message`` for a Contact without ``Name`` or a
refused value; and 429 with ``Retry-After`` past its per-minute limit (Ploomes documents 120
a minute per account). ``substring_filter`` makes ``eq`` on text match any value containing
it, as a careless filter would.

Like Ploomes, it does NOT enforce unique CNPJs or external ids: a client that looks up
and creates carelessly makes duplicates here, which is what the tests look for. Tests
inject failures (5xx storms, failures of chosen calls, slow answers, refused values) and
read ``writes``: every accepted write, in order.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

ENTITY_SETS = ("Contacts", "Deals", "Orders", "Products")


@dataclass
class PloomesState:
    user_key: str = "test-user-key"
    limit: int = 120
    window_s: float = 60.0
    records: dict[str, dict[int, dict[str, Any]]] = field(
        default_factory=lambda: {name: {} for name in ENTITY_SETS}
    )
    """entity set -> Id -> record."""
    writes: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    """Every accepted write, in order: (method, entity set, Id, body)."""
    calls: deque[float] = field(default_factory=deque)
    requests: list[tuple[str, str]] = field(default_factory=list)
    """Every authenticated request, in order: (method, path with query)."""
    rate_limited: int = 0
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer the next calls with (e.g. [503, 503])."""
    fail_on: dict[str, list[int]] = field(default_factory=dict)
    """Statuses for the next calls whose decoded URL or body contains the key."""
    refuse_values: set[str] = field(default_factory=set)
    """Values refused with a 400 wherever they appear in a write."""
    delay_s: float = 0.0
    substring_filter: bool = False
    """``eq`` on a text field matches any value containing it, case-insensitively: a
    filter that matches more than it says, which Ponte must not take at its word."""
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(40_000_001))

    def add(self, entity_set: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record created by hand in Ploomes (not through the API, not in ``writes``)."""
        stored = {**record, "Id": next(self.ids)}
        self.records[entity_set][stored["Id"]] = stored
        return stored


# --- $filter ---------------------------------------------------------------------------

_LITERAL = r"'(?:[^']|'')*'|-?\d+(?:\.\d+)?|true|false|null"
_ANY = re.compile(
    r"OtherProperties/any\((\w+):\s*\1/FieldKey eq (?P<key>'(?:[^']|'')*') and "
    r"\1/(?P<kind>\w+Value) eq (?P<value>" + _LITERAL + r")\)"
)
_EQ = re.compile(r"(?P<field>\w+) eq (?P<value>" + _LITERAL + r")")


def _literal(text: str) -> Any:
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    return float(text) if "." in text else int(text)


def parse_filter(text: str) -> list[Any]:
    """Conditions joined by ``and``: ("field", name, value) or ("other", key, kind, value).
    Anything else is a ValueError (answered 400, as Ploomes does for a bad $filter)."""
    conditions: list[Any] = []
    rest = text.strip()
    while rest:
        if match := _ANY.match(rest):
            key = _literal(match["key"])
            conditions.append(("other", key, match["kind"], _literal(match["value"])))
        elif match := _EQ.match(rest):
            conditions.append(("field", match["field"], _literal(match["value"])))
        else:
            raise ValueError(f"unsupported $filter at {rest[:40]!r}")
        rest = rest[match.end() :].strip()
        if rest:
            if not rest.startswith("and "):
                raise ValueError(f"expected 'and' at {rest[:40]!r}")
            rest = rest[4:].strip()
    return conditions


def _equal(found: Any, wanted: Any, substring: bool) -> bool:
    if substring and isinstance(wanted, str) and isinstance(found, str):
        return wanted.casefold() in found.casefold()
    return bool(found == wanted)


def matches(record: dict[str, Any], conditions: list[Any], substring: bool = False) -> bool:
    for condition in conditions:
        if condition[0] == "field":
            if not _equal(record.get(condition[1]), condition[2], substring):
                return False
        else:
            _, key, kind, value = condition
            others = record.get("OtherProperties") or []
            if not any(
                o.get("FieldKey") == key and _equal(o.get(kind), value, substring) for o in others
            ):
                return False
    return True


# --- the app ---------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": str(status), "message": message}}, status, headers)


def _merge_others(record: dict[str, Any], others: list[dict[str, Any]]) -> None:
    current = {o["FieldKey"]: o for o in record.get("OtherProperties") or []}
    for other in others:
        current[other["FieldKey"]] = dict(other)
    record["OtherProperties"] = list(current.values())


def _shown(record: dict[str, Any], expand: str, select: str) -> dict[str, Any]:
    shown = {k: v for k, v in record.items() if k != "OtherProperties"}
    if select:
        shown = {k: v for k, v in shown.items() if k in select.split(",")}
    if "OtherProperties" in expand:
        shown["OtherProperties"] = record.get("OtherProperties") or []
    return shown


def create_stand_in(state: PloomesState) -> FastAPI:
    app = FastAPI(title="Ploomes stand-in (not Ploomes)")
    path = re.compile(r"^(?P<set>[A-Za-z]+)(?:\((?P<id>\d+)\))?$")

    async def gate(request: Request) -> JSONResponse | None:
        given = request.headers.get("user-key", "")
        if not hmac.compare_digest(given.encode(), state.user_key.encode()):
            return _error(401, "Authorization has been denied for this request.")
        now = time.monotonic()
        while state.calls and now - state.calls[0] > state.window_s:
            state.calls.popleft()
        if len(state.calls) >= state.limit:
            state.rate_limited += 1
            retry = state.window_s - (now - state.calls[0])
            return _error(429, "Too many requests", {"Retry-After": f"{max(retry, 0.1):.3f}"})
        state.calls.append(now)
        state.requests.append((request.method, str(request.url.path) + "?" + request.url.query))
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.fail_next:
            return _error(state.fail_next.pop(0), "injected failure")
        seen = unquote_plus(str(request.url)) + (await request.body()).decode()
        for text, statuses in state.fail_on.items():
            if text in seen and statuses:
                return _error(statuses.pop(0), "injected failure")
        return None

    def refused(body: dict[str, Any]) -> str | None:
        values = [str(v) for v in body.values() if not isinstance(v, list)]
        values += [str(v) for o in body.get("OtherProperties") or [] for v in o.values()]
        bad = next((v for v in values if v in state.refuse_values), None)
        return f"The value {bad!r} is not valid" if bad is not None else None

    @app.api_route("/{resource}", methods=["GET", "POST", "PATCH", "DELETE"])
    async def handle(resource: str, request: Request) -> Response:
        verdict = await gate(request)
        if verdict is not None:
            return verdict
        parsed = path.match(resource)
        if parsed is None or parsed["set"] not in ENTITY_SETS:
            return _error(404, f"No resource {resource!r}")
        entity_set, store = parsed["set"], state.records[parsed["set"]]
        record_id = int(parsed["id"]) if parsed["id"] else None
        method = request.method
        if method == "GET" and record_id is None:
            try:
                conditions = parse_filter(request.query_params.get("$filter", ""))
            except ValueError as error:
                return _error(400, str(error))
            found = [r for r in store.values() if matches(r, conditions, state.substring_filter)]
            top = int(request.query_params.get("$top", "300"))
            skip = int(request.query_params.get("$skip", "0"))
            expand = request.query_params.get("$expand", "")
            select = request.query_params.get("$select", "")
            page = found[skip : skip + top]
            return JSONResponse({"value": [_shown(r, expand, select) for r in page]})
        if method == "POST" and record_id is None:
            body = await request.json()
            if entity_set == "Contacts" and not body.get("Name"):
                return _error(400, "Name: the contact's name is required")
            if reason := refused(body):
                return _error(400, reason)
            record = {k: v for k, v in body.items() if k != "OtherProperties"}
            record["Id"] = next(state.ids)
            _merge_others(record, body.get("OtherProperties") or [])
            store[record["Id"]] = record
            state.writes.append(("POST", entity_set, record["Id"], body))
            return JSONResponse({"value": [record]})
        if record_id is None or method not in ("PATCH", "DELETE"):
            return _error(405, f"{method} is not allowed on {resource}")
        if record_id not in store:
            return _error(404, f"{entity_set} {record_id} not found")
        if method == "DELETE":
            del store[record_id]
            state.writes.append(("DELETE", entity_set, record_id, {}))
            return Response(status_code=200)
        body = await request.json()
        if "Name" in body and entity_set == "Contacts" and not body["Name"]:
            return _error(400, "Name: the contact's name is required")
        if reason := refused(body):
            return _error(400, reason)
        record = store[record_id]
        record.update({k: v for k, v in body.items() if k not in ("OtherProperties", "Id")})
        _merge_others(record, body.get("OtherProperties") or [])
        state.writes.append(("PATCH", entity_set, record_id, body))
        return JSONResponse({"value": [record]})

    return app
