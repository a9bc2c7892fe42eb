"""Ploomes CRM (``https://public-api2.ploomes.com``, OData v4): find, then create or update.

Ploomes has no upsert by an external id and no batch endpoint, so each record costs one
or two calls, each through the target's token bucket (Ploomes documents 120 requests a
minute per account: the default ``rate_limit`` here). Authentication is the ``User-Key``
header. Companies and people are both ``/Contacts`` (told apart by ``TypeId``); deals,
orders and products are ``/Deals``, ``/Orders`` and ``/Products``. Lists answer
``{"value": [...]}``; custom fields are ``OtherProperties``, a list of
``{"FieldKey": ..., "StringValue" | "IntegerValue" | ...: value}``.

One record, in order:
1. The CRM id is known (an earlier delivery stored it): ``PATCH /{Set}({Id})``. A 404 means
   someone deleted the record in Ploomes: fall through to 2.
2. Look it up: ``GET /{Set}?$filter=...`` on the object's ``lookup_field`` (a unique
   top-level field such as ``CNPJ``), then, if still not found, on its
   ``external_id_field`` (an ``OtherProperties`` field holding Ponte's external id, written
   on every create and update). One match: PATCH it. None: POST. More than one: refused,
   because guessing which duplicate is "ours" would silently update the wrong record.

Why lookup-then-write cannot race into a duplicate: every record holds its keys (its
external id and its lookup values, ``Contacts/CNPJ=...``) from its lookup to its write,
through ``ponte.deliver.keylock.KeyLocks``, taken in sorted order (no deadlock). In this
process that is an ``asyncio.Lock`` per key; with the service's key-lock pool it is also a
PostgreSQL advisory lock per key, so writers in other deliver replicas wait too. Two
writes of the same record, or of two different Ponte records with the same CNPJ (two
sources) handled by two replicas at the same instant, therefore run one after the other,
and the second finds what the first created. Without a pool (a connector built on its
own, as some tests do) only this process is covered.

Failures per record, since every record is its own call:
- A terminal 4xx (400 validation, 404 on a lookup, ...) goes to ``BatchOutcome.failed``
  with Ploomes' message; the other records carry on.
- A retryable one (429, 5xx, timeout, connection) does not fail the record: once every
  other record of the batch is done, the whole call raises ``RetryableError`` and the
  engine retries the batch. Re-running is safe because every write is found again by its
  lookup (idempotent), and cheap because records already written in the failed attempt
  are remembered with their id and body and are not sent again unless they changed.
  Returning them as ``failed`` instead would dead-letter a record for a passing 503.
- 401/403 mean the key is wrong or lacks rights for every record: the batch raises
  ``TerminalError`` at once instead of spending the quota on calls bound to fail.

Links (``associate``): Ploomes links by a field of the record (a person's ``CompanyId``,
a deal's ``ContactId``), so a link is a ``PATCH`` of the field named in the object's
``link_fields``; a pair with no such field configured is refused with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Literal

import httpx
import orjson
from pydantic import Field, model_validator

from ponte.deliver.connectors.base import (
    BatchOutcome,
    KeyMatch,
    Outgoing,
    PairsRefused,
    check_same_record,
    same_key,
)
from ponte.deliver.keylock import KeyLocks
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import ObjectMapping, RateLimit, Target
from ponte.shared import db
from ponte.shared.http_policy import (
    RetryableError,
    TerminalError,
    classify,
    first_to_raise,
    retry_after_s,
    transport_failed,
)

ENTITY_SETS = ("Contacts", "Deals", "Orders", "Products")
"""The Ploomes collections this connector writes (and its stand-in speaks)."""

ValueKind = Literal[
    "StringValue", "BigStringValue", "IntegerValue", "DecimalValue", "DateTimeValue", "BoolValue"
]

CONFIRMED_IDS_KEPT = 50_000
"""Records this process wrote, whose Ids the update guard need not read again."""
LOOKUP_PAGE = 50
LOOKUP_MAX_PAGES = 10
"""A lookup reads up to this many pages of ``LOOKUP_PAGE`` records before giving up."""
WRITTEN_MEMORY = 10_000
WRITTEN_MEMORY_S = 600.0
"""Records written by an attempt that raised RetryableError are remembered (at most this
many, this long) so the retry does not send them again (see the module)."""


class PloomesObject(ObjectMapping):
    """One CRM-model entity as a Ploomes record.

    ``object_type`` is this object's name within the target (unique; what links refer
    to); ``entity_set`` is the Ploomes collection, by default ``object_type`` itself, so
    ``object_type: Deals`` needs nothing more while companies and people, both
    ``Contacts``, are e.g. ``object_type: companies, entity_set: Contacts, type_id: 1``.
    ``properties`` maps columns to Ploomes fields; a field listed in ``other_properties``
    is a custom field (its ``FieldKey``, with the value kind Ploomes stores it as) and is
    sent in ``OtherProperties``; every other field is a top-level field.
    """

    entity_set: str | None = None
    type_id: int | None = None
    """``TypeId`` of a Contact, sent on create and part of every lookup, so a company is
    never matched to a person (1 company, 2 person is assumed; check the account's types)."""
    other_properties: dict[str, ValueKind] = Field(default_factory=dict)
    """Custom field key -> how Ploomes stores it (``StringValue``, ``DecimalValue`` ...)."""
    lookup_field: str | None = None
    """A unique top-level Ploomes field among ``properties`` (``CNPJ``, ``CPF``, ``Code``)."""
    lookup_match: KeyMatch = "exact"
    """How a found record's ``lookup_field`` is compared with the record's own:
    ``exact``, ``casefold`` or ``digits`` (a CNPJ stored with or without punctuation)."""
    verify_updates: bool = True
    """Before a PATCH by a stored Id, read that record's ``lookup_field`` and refuse the
    update when it is another record's (one GET more per such update)."""
    external_id_field: str | None = None
    """A custom text field (``FieldKey``) that holds Ponte's external id."""
    link_fields: dict[str, str] = Field(default_factory=dict)
    """Linked CRM-model entity -> the field of this record holding its Ploomes id
    (``company: CompanyId`` for a person, ``company: ContactId`` for a deal)."""

    @model_validator(mode="after")
    def _consistent(self) -> PloomesObject:
        entity_set = self.entity_set or self.object_type
        if entity_set not in ENTITY_SETS:
            raise ValueError(
                f"entity_set: {entity_set!r} is not one of {list(ENTITY_SETS)} "
                "(set entity_set when object_type is only a name, e.g. companies)"
            )
        self.entity_set = entity_set
        if entity_set == "Contacts" and self.type_id is None:
            raise ValueError("type_id: required for Contacts (1 company, 2 person by default)")
        fields = set(self.properties.values())
        for key in self.other_properties:
            if key not in fields:
                raise ValueError(
                    f"other_properties: {key!r} is not a field in properties {sorted(fields)}"
                )
        if self.lookup_field is None and self.external_id_field is None:
            raise ValueError(
                "set lookup_field (a unique Ploomes field such as CNPJ) and/or "
                "external_id_field (a custom field holding Ponte's id): Ploomes has no "
                "upsert, so Ponte must find the record before writing it"
            )
        if self.lookup_field is not None:
            if self.lookup_field not in fields:
                raise ValueError(
                    f"lookup_field: {self.lookup_field!r} is not a field in properties "
                    f"{sorted(fields)}"
                )
            if self.lookup_field in self.other_properties:
                raise ValueError(
                    f"lookup_field: {self.lookup_field!r} is a custom field; use "
                    "external_id_field for a custom field holding Ponte's id"
                )
        if self.external_id_field is not None and self.external_id_field in fields:
            raise ValueError(
                f"external_id_field: {self.external_id_field!r} is also mapped in "
                "properties; it holds Ponte's external id only"
            )
        for entity in self.link_fields:
            if entity not in self.associations.values():
                raise ValueError(
                    f"link_fields: {entity!r} is not linked in associations "
                    f"{self.associations or '{}'}"
                )
        return self


class PloomesTarget(Target):
    """``kind: ploomes``: the account's User-Key and how each object is found."""

    kind: Literal["ploomes"]
    base_url: str = "https://public-api2.ploomes.com"
    user_key: str = Field(repr=False, min_length=1)
    rate_limit: RateLimit = RateLimit(requests=120, per_seconds=60)
    objects: dict[str, PloomesObject]  # type: ignore[assignment]  # a richer mapping
    parallel_records: int = Field(default=4, gt=0, le=32)
    """Records of one batch written at once (each still waits for the token bucket)."""

    @model_validator(mode="after")
    def _unique_object_types(self) -> PloomesTarget:
        seen: dict[str, str] = {}
        for entity, mapping in self.objects.items():
            if mapping.object_type in seen:
                raise ValueError(
                    f"objects.{entity}.object_type: {mapping.object_type!r} is also used by "
                    f"{seen[mapping.object_type]}; name each object uniquely and set "
                    "entity_set (e.g. companies and people, both entity_set: Contacts)"
                )
            seen[mapping.object_type] = entity
            for linked in mapping.link_fields:
                if linked not in self.objects:
                    raise ValueError(
                        f"objects.{entity}.link_fields: {linked!r} is not among this "
                        "target's objects"
                    )
        return self


@dataclass(frozen=True)
class _Lookup:
    """One way to find a record: its lock key, the OData filter asking Ploomes, and the
    check Ponte makes on every record Ploomes answers with."""

    lock_key: str
    odata_filter: str
    params: dict[str, str]
    described: str
    matches: Callable[[dict[str, Any]], bool]


@dataclass
class _Retry:
    """A record that hit a retryable failure: the batch is retried once the rest is done."""

    error: RetryableError


@dataclass
class _Refused:
    reason: str


@dataclass
class _Written:
    crm_id: str


class _AuthFailed(Exception):
    """401/403: stop the whole batch (wrapped to leave the task group)."""

    def __init__(self, error: TerminalError) -> None:
        super().__init__(str(error))
        self.error = error


def odata_literal(value: Any) -> str:
    """An OData literal: strings quoted with ``'`` doubled, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _has_value(record: dict[str, Any], *, field: str, value: str, match: KeyMatch) -> bool:
    return same_key(record.get(field), value, match)


def _has_custom_text(record: dict[str, Any], *, key: str, value: str) -> bool:
    return any(
        isinstance(other, dict)
        and other.get("FieldKey") == key
        and other.get("StringValue") == value
        for other in record.get("OtherProperties") or []
    )


def _message(response: httpx.Response) -> str:
    """Ploomes' own error message (OData ``error.message``, or ``Message``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("Message"):
            return str(body["Message"])
    return response.text[:200]


def _records(response: httpx.Response) -> list[dict[str, Any]]:
    """The records of an answer: ``{"value": [...]}``, or one record as the body."""
    try:
        body = response.json()
    except ValueError:
        return []
    if isinstance(body, dict) and isinstance(body.get("value"), list):
        return [item for item in body["value"] if isinstance(item, dict)]
    return [body] if isinstance(body, dict) and "Id" in body else []


def _custom_value(kind: ValueKind, value: Any) -> Any:
    """A column's value as Ploomes stores that kind; ValueError names what is wrong."""
    if value is None:
        return None
    if kind in ("StringValue", "BigStringValue"):
        return str(value)
    if kind == "IntegerValue":
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(float(value))
    if kind == "DecimalValue":
        try:
            return float(Decimal(str(value)))
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    if kind == "DateTimeValue":
        if isinstance(value, datetime | date):
            return value.isoformat()
        return datetime.fromisoformat(str(value)).isoformat()
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


class PloomesConnector:
    def __init__(
        self,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        target: PloomesTarget,
        locks: KeyLocks | None = None,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._headers = {"User-Key": target.user_key}
        self._objects = {mapping.object_type: mapping for mapping in target.objects.values()}
        self._by_entity = {entity: mapping for entity, mapping in target.objects.items()}
        self._parallel = target.parallel_records
        self._locks = locks or KeyLocks(target.id)
        self._confirmed: OrderedDict[str, str] = OrderedDict()
        """external id -> the Ploomes Id this process wrote it to: not checked again."""
        self._written: dict[str, tuple[str, bytes, float]] = {}
        """external id -> (Ploomes id, body digest, when) from an attempt that raised."""

    @classmethod
    def for_target(
        cls,
        target: PloomesTarget,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        locks: KeyLocks | None = None,
    ) -> PloomesConnector:
        """``locks``: shared with other replicas when built with the key-lock pool
        (``connectors.build_connector``); by default this process only."""
        return cls(client, bucket, target, locks)

    # --- HTTP -------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        accept_404: bool = False,
    ) -> httpx.Response:
        """One call through the token bucket; raises Retryable/TerminalError by status."""
        await self._bucket.acquire()
        try:
            response = await self._client.request(
                method,
                path,
                params=params,
                content=orjson.dumps(body) if body is not None else None,
                headers={**self._headers, "Content-Type": "application/json"},
            )
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise transport_failed(error, f"{method} {path}") from None
        status = response.status_code
        verdict = classify(status)
        if verdict == "rate_limited":
            wait = retry_after_s(response.headers) or 60.0  # the limit is per minute
            self._bucket.pause(wait)
            raise RetryableError(
                "rate limited", status=429, excerpt=response.text, retry_after=wait
            )
        if verdict == "retryable":
            raise RetryableError(
                f"server error {status} on {method} {path}",
                status=status,
                excerpt=response.text,
                retry_after=retry_after_s(response.headers),
            )
        if status == 404 and accept_404:
            return response
        if verdict == "terminal":
            raise TerminalError(
                f"{method} {path} refused with {status}: {_message(response)}",
                status=status,
                excerpt=response.text,
            )
        return response

    # --- bodies -----------------------------------------------------------------------

    def _body(self, mapping: PloomesObject, record: Outgoing) -> dict[str, Any]:
        body: dict[str, Any] = {}
        others: list[dict[str, Any]] = []
        for field, value in record.properties.items():
            kind = mapping.other_properties.get(field)
            if kind is None:
                body[field] = value
            else:
                try:
                    others.append({"FieldKey": field, kind: _custom_value(kind, value)})
                except ValueError as error:
                    raise TerminalError(f"{field}: {error}") from None
        if mapping.external_id_field:
            others.append(
                {"FieldKey": mapping.external_id_field, "StringValue": record.external_id}
            )
        if others:
            body["OtherProperties"] = others
        return body

    def _filters(self, mapping: PloomesObject, record: Outgoing) -> list[_Lookup]:
        """Each way to find the record, in the order tried."""
        prefix = f"TypeId eq {mapping.type_id} and " if mapping.type_id is not None else ""
        found: list[_Lookup] = []
        value = record.properties.get(mapping.lookup_field) if mapping.lookup_field else None
        if mapping.lookup_field and value not in (None, ""):
            field = mapping.lookup_field
            found.append(
                _Lookup(
                    f"{mapping.entity_set}/{field}={value}",
                    f"{prefix}{field} eq {odata_literal(value)}",
                    {"$select": f"Id,{field}"},
                    f"{field} {value!r}",
                    partial(_has_value, field=field, value=str(value), match=mapping.lookup_match),
                )
            )
        if mapping.external_id_field:
            key = mapping.external_id_field
            found.append(
                _Lookup(
                    f"{mapping.entity_set}/{key}={record.external_id}",
                    f"{prefix}OtherProperties/any(o: o/FieldKey eq {odata_literal(key)} and "
                    f"o/StringValue eq {odata_literal(record.external_id)})",
                    {"$select": "Id", "$expand": "OtherProperties"},
                    f"{key} {record.external_id!r}",
                    partial(_has_custom_text, key=key, value=record.external_id),
                )
            )
        return found

    # --- one record -------------------------------------------------------------------

    async def _find(self, mapping: PloomesObject, lookup: _Lookup) -> list[dict[str, Any]]:
        """The records that really have the lookup's value, every page read: Ponte checks
        each result itself instead of trusting the filter (a filter that matches more
        than it should would otherwise make Ponte update a stranger's record)."""
        exact: list[dict[str, Any]] = []
        for page in range(LOOKUP_MAX_PAGES):
            params = {
                "$filter": lookup.odata_filter,
                "$top": str(LOOKUP_PAGE),
                "$skip": str(page * LOOKUP_PAGE),
                **lookup.params,
            }
            found = _records(await self._call("GET", f"/{mapping.entity_set}", params=params))
            exact += [record for record in found if "Id" in record and lookup.matches(record)]
            if len(found) < LOOKUP_PAGE:
                return exact
        raise TerminalError(
            f"{mapping.entity_set} filtered by {lookup.odata_filter} still answers after "
            f"{LOOKUP_MAX_PAGES * LOOKUP_PAGE} records; Ponte cannot be sure which is this one"
        )

    async def _write(self, mapping: PloomesObject, record: Outgoing) -> str:
        """Write the record (see the module for the order); its Ploomes id."""
        body = self._body(mapping, record)
        filters = self._filters(mapping, record)
        async with self._locks.hold([record.external_id] + [f.lock_key for f in filters]):
            if record.crm_id and await self._still_this_record(mapping, record):
                path = f"/{mapping.entity_set}({record.crm_id})"
                response = await self._call("PATCH", path, body=body, accept_404=True)
                if response.status_code != 404:
                    return record.crm_id
            if not filters:
                raise TerminalError(
                    f"{mapping.lookup_field} is empty and there is no external_id_field: "
                    "the record cannot be looked up, so it is not created (it could duplicate)"
                )
            for lookup in filters:
                matches = await self._find(mapping, lookup)
                if len(matches) > 1:
                    ids = ", ".join(str(match.get("Id")) for match in matches)
                    raise TerminalError(
                        f"{len(matches)} {mapping.entity_set} have {lookup.described} "
                        f"(Ids {ids}); Ponte will not guess which one to update"
                    )
                if matches:
                    crm_id = str(matches[0]["Id"])
                    await self._call("PATCH", f"/{mapping.entity_set}({crm_id})", body=body)
                    return crm_id
            if mapping.type_id is not None:
                body = {"TypeId": mapping.type_id, **body}
            created = _records(await self._call("POST", f"/{mapping.entity_set}", body=body))
            if not created or "Id" not in created[0]:
                raise TerminalError("created, but Ploomes' answer has no Id")
            return str(created[0]["Id"])

    async def _still_this_record(self, mapping: PloomesObject, record: Outgoing) -> bool:
        """Before a PATCH by the Id stored from an earlier delivery: the Ploomes record
        must still have this record's ``lookup_field`` value (``check_same_record``);
        False when it is gone. One GET more per such update (``verify_updates``)."""
        field = mapping.lookup_field
        value = record.properties.get(field) if field else None
        assert record.crm_id is not None
        if (
            not mapping.verify_updates
            or field is None
            or value in (None, "")
            or self._confirmed.get(record.external_id) == record.crm_id
        ):
            return True
        if not record.crm_id.isdigit():
            raise TerminalError(f"{record.crm_id!r} is not a Ploomes Id")
        response = await self._call(
            "GET",
            f"/{mapping.entity_set}",
            params={"$filter": f"Id eq {record.crm_id}", "$select": f"Id,{field}"},
        )
        found = _records(response)
        if not found:
            return False
        check_same_record(
            what=f"{mapping.entity_set} {record.crm_id} in Ploomes",
            key_name=field,
            found=found[0].get(field),
            key=str(value),
            last_delivered=record.crm_key,
            match=mapping.lookup_match,
        )
        return True

    async def _deliver_one(
        self, mapping: PloomesObject, record: Outgoing
    ) -> _Written | _Refused | _Retry:
        digest = hashlib.blake2b(
            orjson.dumps(record.properties, option=orjson.OPT_SORT_KEYS, default=str)
        ).digest()
        remembered = self._written.pop(record.external_id, None)
        if (
            remembered is not None
            and remembered[1] == digest
            and time.monotonic() - remembered[2] < WRITTEN_MEMORY_S
        ):
            return _Written(remembered[0])  # written, unchanged, by the attempt that raised
        try:
            crm_id = await self._write(mapping, record)
        except RetryableError as error:
            return _Retry(error)
        except TerminalError as error:
            if error.status in (401, 403):
                raise _AuthFailed(error) from None
            return _Refused(str(error))
        self._written[record.external_id] = (crm_id, digest, time.monotonic())
        self._confirmed[record.external_id] = crm_id
        self._confirmed.move_to_end(record.external_id)
        while len(self._confirmed) > CONFIRMED_IDS_KEPT:
            self._confirmed.popitem(last=False)
        return _Written(crm_id)

    # --- the Connector protocol --------------------------------------------------------

    def _mapping(self, object_type: str) -> PloomesObject:
        mapping = self._objects.get(object_type)
        if mapping is None:
            raise TerminalError(f"object type {object_type!r} is not configured for Ploomes")
        return mapping

    async def upsert_batch(self, object_type: str, records: list[Outgoing]) -> BatchOutcome:
        mapping = self._mapping(object_type)
        limit = asyncio.Semaphore(self._parallel)

        async def one(record: Outgoing) -> _Written | _Refused | _Retry:
            async with limit:
                return await self._deliver_one(mapping, record)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(record)) for record in records]
        except* _AuthFailed as failures:
            auth = failures.exceptions[0]
            assert isinstance(auth, _AuthFailed)
            raise auth.error from None
        except* db.UNAVAILABLE as failures:
            # The key locks' database is out (or a lock wait timed out): raised bare, as
            # the consumer retries such a batch in place instead of spending an attempt.
            raise failures.exceptions[0] from None
        results = {
            record.external_id: task.result() for record, task in zip(records, tasks, strict=True)
        }
        retries = [result.error for result in results.values() if isinstance(result, _Retry)]
        if retries:
            if len(self._written) > WRITTEN_MEMORY:
                self._written.clear()
            first = retries[0]
            waits = [error.retry_after for error in retries if error.retry_after]
            raise RetryableError(
                f"{len(retries)} of {len(records)} record(s) may pass later ({first}); "
                "the batch is retried (writes are found again by lookup)",
                status=first.status,
                excerpt=first.excerpt,
                retry_after=max(waits) if waits else None,
            )
        outcome = BatchOutcome()
        for record in records:
            external_id, result = record.external_id, results[record.external_id]
            self._written.pop(external_id, None)
            if isinstance(result, _Written):
                outcome.delivered[external_id] = result.crm_id
                key = record.properties.get(mapping.lookup_field or "")
                if key not in (None, ""):
                    outcome.keys[external_id] = str(key)
            elif isinstance(result, _Refused):
                outcome.failed[external_id] = result.reason
        return outcome

    async def delete_batch(self, object_type: str, crm_ids: list[str]) -> None:
        """``DELETE /{Set}({Id})`` each; one already gone (404) counts as deleted."""
        mapping = self._mapping(object_type)
        limit = asyncio.Semaphore(self._parallel)

        async def one(crm_id: str) -> None:
            async with limit:
                await self._call("DELETE", f"/{mapping.entity_set}({crm_id})", accept_404=True)

        results = await asyncio.gather(*(one(crm_id) for crm_id in crm_ids), return_exceptions=True)
        if (error := first_to_raise(results)) is not None:
            raise error

    async def associate(self, from_type: str, to_type: str, pairs: list[tuple[str, str]]) -> None:
        """Set the link field of each ``from`` record to its ``to`` record's Ploomes id."""
        mapping = self._mapping(from_type)
        to_entity = next(
            (entity for entity, m in self._by_entity.items() if m.object_type == to_type), None
        )
        field = mapping.link_fields.get(to_entity or "")
        if field is None:
            raise TerminalError(
                f"Ploomes links by a field of the record, and objects with object_type "
                f"{from_type!r} names none for {to_entity or to_type!r}: add "
                f"link_fields: {{{to_entity or to_type}: <field, e.g. ContactId>}}"
            )
        limit = asyncio.Semaphore(self._parallel)

        async def one(pair: tuple[str, str]) -> None:
            async with limit:
                await self._call(
                    "PATCH", f"/{mapping.entity_set}({pair[0]})", body={field: int(pair[1])}
                )

        results = await asyncio.gather(*(one(pair) for pair in pairs), return_exceptions=True)
        # A bug or a passing failure first (pairs already linked are linked again on the
        # retry: the PATCH is idempotent); then the refused pairs, each with its reason.
        error = first_to_raise(r for r in results if not isinstance(r, TerminalError))
        if error is not None:
            raise error
        refused = {
            pair: str(result)
            for pair, result in zip(pairs, results, strict=True)
            if isinstance(result, TerminalError)
        }
        if refused:
            first = next(r for r in results if isinstance(r, TerminalError))
            raise PairsRefused(refused, status=first.status or 400, excerpt=first.excerpt)

    async def read_back(self, object_type: str, crm_id: str) -> dict[str, Any] | None:
        mapping = self._mapping(object_type)
        if not crm_id.isdigit():
            raise TerminalError(f"{crm_id!r} is not a Ploomes Id")
        response = await self._call(
            "GET",
            f"/{mapping.entity_set}",
            params={"$filter": f"Id eq {crm_id}", "$expand": "OtherProperties"},
        )
        found = _records(response)
        return found[0] if found else None
