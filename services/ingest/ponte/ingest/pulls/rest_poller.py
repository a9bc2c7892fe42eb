"""The REST polling connector: one run's pages from an ERP's API, as raw events.

``RestPoller.pages`` yields page after page, each already turned into the ``RawEvent``\\s a
webhook of the same source would have produced (one per record, keyed by the mapping's key
fields through ``erp_record_key``, exactly as ``deliveries.parse_erp`` keys them), so the
caller can publish a page and wait for Kafka's acknowledgement before asking for the next.

Event ids are deterministic: a record's id is made of the *basis* (the id of the run that
saved the cursor this run started from), its table, key and content. A run that fails half
way leaves the cursor where it was, so the next run has the same basis, pulls the same
records again and produces the same ids for them: the transform recognises the events the
failed run had already written. A record changed back and forth (A, B, A) across successful
runs gets a new id each time, because the basis moved.

Errors never carry the request's headers (they hold the credentials) nor its query string.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from ponte.shared import strict_json
from ponte.shared.events import Operation, RawEvent, delivery_id_for, erp_record_key
from ponte.shared.http_policy import classify, retry_after_s
from ponte.shared.parsers import ParseError, parse_datetime
from ponte.shared.pulls import RestPullDefinition, json_path
from ponte.shared.source_kinds import SourceKind


class PullFailed(Exception):
    """A run could not complete; the message is safe to store and show (no secrets)."""


@dataclass
class Page:
    number: int
    events: list[RawEvent]
    rejected: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CursorTracker:
    """The cursor the run will save: the last one a response gave, or the greatest value of
    the record field among the records pulled; unchanged when nothing new came."""

    before: str | None
    seen: Any = None

    def offer(self, value: Any) -> None:
        if value in (None, ""):
            return
        if self.seen is None or _orderable(value) > _orderable(self.seen):
            self.seen = value

    def replace(self, value: Any) -> None:
        if value not in (None, ""):
            self.seen = value

    @property
    def after(self) -> str | None:
        return str(self.seen) if self.seen is not None else self.before


def _orderable(value: Any) -> tuple[int, Any]:
    """Numbers compare as numbers, anything else as text (ISO timestamps sort as text)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _where(url: str) -> str:
    """The URL without its query string (it may carry an API key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class RestPoller:
    def __init__(
        self,
        definition: RestPullDefinition,
        client: httpx.AsyncClient,
        key_fields: list[str] | None,
    ) -> None:
        self._definition = definition
        self._client = client
        self._key_fields = key_fields

    async def pages(
        self,
        tracker: CursorTracker,
        *,
        basis: int,
        received_at: datetime,
    ) -> AsyncIterator[Page]:
        """Every page of one run, in order; raises PullFailed on the first bad page."""
        request = self._definition.request
        pagination = request.pagination
        params: dict[str, Any] = dict(request.params)
        if request.cursor is not None:
            start = tracker.before if tracker.before is not None else request.cursor.initial
            if start is not None:
                params[request.cursor.param] = start
        url = request.url
        number = pagination.start if pagination and pagination.style == "page_number" else 1
        for page_index in range(pagination.max_pages if pagination else 1):
            if pagination is not None and pagination.style == "page_number":
                assert pagination.param is not None
                params[pagination.param] = number
            body = await self._get(url, params, page_index + 1)
            records = json_path(body, self._definition.rows.list_path)
            if records is None:
                records = []
            if not isinstance(records, list):
                raise PullFailed(
                    f"page {page_index + 1}: rows.list_path {self._definition.rows.list_path!r} "
                    f"is a {type(records).__name__}, not a list"
                )
            if request.cursor is not None and request.cursor.response_path is not None:
                tracker.replace(json_path(body, request.cursor.response_path))
            yield self._page(page_index + 1, records, tracker, basis, received_at)
            if pagination is None:
                return
            if pagination.style == "page_number":
                if not records:
                    return
                number += 1
            elif pagination.style == "next_token":
                assert pagination.token_path is not None and pagination.param is not None
                token = json_path(body, pagination.token_path)
                if token in (None, ""):
                    return
                params[pagination.param] = token
            else:
                assert pagination.link_path is not None
                link = json_path(body, pagination.link_path)
                if not isinstance(link, str) or not link:
                    return
                # The link carries every parameter the ERP wants back.
                url, params = urljoin(request.base_url.rstrip("/") + "/", link), {}
        assert pagination is not None  # without pagination the loop returned after one page
        raise PullFailed(f"more than {pagination.max_pages} pages; raise pagination.max_pages")

    async def _get(self, url: str, params: dict[str, Any], page: int) -> Any:
        request = self._definition.request
        try:
            response = await self._client.get(
                url, params=params, headers=request.headers, timeout=request.timeout_s
            )
        except httpx.HTTPError as error:
            raise PullFailed(
                f"page {page}: GET {_where(url)} failed: {type(error).__name__}"
            ) from None
        if response.status_code != 200:
            # The run fails either way (its cursor stays, the next run pulls this page
            # again); the policy's verdict tells the operator whether waiting will help.
            verdict = classify(response.status_code)
            wait = retry_after_s(response.headers)
            advice = {
                "ok": "not the 200 a page needs",
                "rate_limited": "rate limited"
                + (f", the ERP asks to wait {wait:g} s" if wait is not None else ""),
                "retryable": "a passing failure: the next run tries again",
                "terminal": "refused: check the pull's URL, parameters and credentials",
            }[verdict]
            raise PullFailed(
                f"page {page}: GET {_where(url)} answered {response.status_code} ({advice}): "
                f"{response.text[:200]}"
            )
        # The edge's strict decoder, as for webhooks: a page beyond its limits fails the
        # run by name rather than reaching the raw topic and being refused later.
        charset = response.charset_encoding
        document: bytes | str = response.content
        if charset and codecs.lookup(charset).name != "utf-8":
            document = response.text
        try:
            return strict_json.loads(document)
        except strict_json.JsonRefused as refused:
            raise PullFailed(
                f"page {page}: GET {_where(url)} did not answer JSON Ponte accepts: "
                f"{refused.message}"
            ) from None

    def _page(
        self,
        number: int,
        records: list[Any],
        tracker: CursorTracker,
        basis: int,
        received_at: datetime,
    ) -> Page:
        page = Page(number, [])
        for position, record in enumerate(records):
            row, problem = self._row(record)
            if problem is not None:
                page.rejected.append({"page": number, "record": position, **problem})
                continue
            assert row is not None
            try:
                occurred_at = self._occurred_at(row) or received_at
            except ParseError as error:
                page.rejected.append(
                    {
                        "page": number,
                        "record": position,
                        "field": self._definition.rows.occurred_at_field,
                        "reason": str(error),
                    }
                )
                continue
            cursor = self._definition.request.cursor
            if cursor is not None and cursor.record_field is not None:
                tracker.offer(row.get(cursor.record_field))
            page.events.append(self._event(row, occurred_at, basis, received_at))
        return page

    def _row(self, record: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if not isinstance(record, dict) or not record:
            return None, {"field": None, "reason": "record is not a non-empty JSON object"}
        renames = self._definition.rows.renames
        row: dict[str, Any] = {
            str(renames.get(name, name)): value for name, value in record.items()
        }
        for name in self._key_fields or []:
            value = row.get(name)
            if value in (None, "") or isinstance(value, dict | list):
                return None, {"field": name, "reason": "key field is missing or empty"}
        return row, None

    def _occurred_at(self, row: dict[str, Any]) -> datetime | None:
        name = self._definition.rows.occurred_at_field
        return parse_datetime(row.get(name)) if name else None

    def _event(
        self, row: dict[str, Any], occurred_at: datetime, basis: int, received_at: datetime
    ) -> RawEvent:
        rows = self._definition.rows
        source_id = self._definition.source_id
        record_key = erp_record_key(rows.table, row, self._key_fields)
        content = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
        digest = hashlib.sha256(f"{rows.operation}\x00{content}".encode()).hexdigest()[:32]
        delivery_id = delivery_id_for(source_id, f"pull:{basis}:{rows.table}:{record_key}:{digest}")
        return RawEvent(
            event_id=f"{delivery_id}/0",
            delivery_id=delivery_id,
            index=0,
            count=1,
            source_id=source_id,
            source_kind=SourceKind.ERP,
            # Orders versions that share occurred_at: a later successful run sorts later.
            source_event_id=f"pull-{basis:012d}",
            topic=rows.table,
            operation=Operation(rows.operation),
            record_key=record_key,
            occurred_at=occurred_at,
            received_at=received_at,
            payload=row,
        )
