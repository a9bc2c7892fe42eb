"""``kind: rest``: a CRM with a plain REST API, as configuration instead of code.

Most small CRMs offer the same handful of calls: log in (or take a static API key), create a
record, update it by its id, search by a field, delete by id. This connector drives those
calls from the target's YAML (``docs/connectors/rest.md`` has a worked example, loaded by
the tests so it cannot rot). One call per record (no batch endpoint is assumed), at most
``concurrency`` at once, each through the target's token bucket.

Templating is deliberately tiny, so a config reads the same everywhere:
- ``{crm_id}``, ``{key}`` (the natural key's value), ``{from_id}``/``{to_id}`` in paths,
  query values and body strings, replaced as plain text (a value's braces are never read
  as another placeholder); values in paths are URL-quoted;
- dotted JSON paths (``data.items``, ``item.id``, ``data.0.id``) to read an answer and,
  on the property side, to build nested JSON (``custom_fields.cnpj`` ->
  ``{"custom_fields": {"cnpj": ...}}``).

A property may also be computed from the row (``properties: {first_name: {template:
"{legal_name}", split: first}}``, a phone in E.164, a country's ISO code, a value map,
``required``) and null properties left out (``omit_null``): ``ponte.deliver.expressions``,
applied by ``RestObject.values_for`` before the record reaches this connector.

How a record is written (``RestConnector._upsert_one``):
1. a known CRM id (``Outgoing.crm_id`` from ``deliveries``, or one learned earlier in this
   process) goes straight to update; a 404 there means someone deleted it in the CRM, so
   the record falls back to the steps below;
2. with a natural key (a CRM-model column such as ``document``, the CNPJ, when the API has
   no external-id field) and ``search_before_create``, search by it and update what is
   found (more than one match is refused: Ponte does not guess which is right);
3. else create, and read the new id from the answer.

Steps 1-3 run under the record's key (its natural key's value, else its external id),
held through ``ponte.deliver.keylock.KeyLocks``: in this process and, with the service's
key-lock pool, across deliver replicas, so two writers of one CNPJ never both create.

Two rules for CRMs that misbehave, each off unless configured:
- ``create_error_may_have_saved``: a create answered with a 5xx (or a status listed in
  ``create_error_statuses``), or that timed out, may have saved the record anyway. Ponte
  searches by the natural key before creating again and updates what it finds, instead of
  retrying the create into a duplicate.
- ``create_returns_no_id``: the create's answer carries no id, so Ponte searches by the
  natural key afterwards to learn it (without the rule, an answer without an id is an
  error: the record would be created again on its next version).

Failures: 429, 5xx, timeouts and connection errors raise ``RetryableError`` (with the
server's Retry-After); any other 4xx puts that record in ``BatchOutcome.failed`` with the
answer's excerpt, and the others of the batch carry on. If any record of a batch hit a
retryable error, the batch raises after every record was tried; the retry is idempotent
because ids learned in this attempt are remembered (``_learned``) and a record whose
create failed uncertainly is searched first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Annotated, Any, Literal
from urllib.parse import quote

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ponte.deliver.connectors.base import (
    BatchOutcome,
    KeyMatch,
    Outgoing,
    PairsRefused,
    check_same_record,
    normalise_key,
    same_key,
)
from ponte.deliver.expressions import PropertyExpression
from ponte.deliver.keylock import KeyLocks
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import ObjectMapping, Target
from ponte.shared.crm_model import crm_model
from ponte.shared.http_policy import (
    RetryableError,
    TerminalError,
    first_to_raise,
    raise_for,
    retry_after_s,
    slowest,
    transport_failed,
)

log = logging.getLogger(__name__)

MAX_CANDIDATES_READ = 20
"""Search results read back one by one to check their key when the results do not carry
it (``search.key`` unset); more is refused rather than spending the rate limit."""
LEARNED_IDS_KEPT = 50_000
"""CRM ids learned in this process, kept so a retried batch updates instead of creating
again; the durable copy is the ``deliveries`` table."""

# --- templates and JSON paths -------------------------------------------------------------


def get_path(document: Any, path: str) -> Any:
    """The value at a dotted path (``data.items.0.id``), or None when any step is missing.
    An empty path is the document itself."""
    value = document
    for step in path.split(".") if path else []:
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Put ``value`` at a dotted path, building the nested objects on the way."""
    *parents, last = path.split(".")
    for step in parents:
        document = document.setdefault(step, {})
    document[last] = value


def fill(template: Any, values: dict[str, str]) -> Any:
    """Placeholders replaced in every string of a JSON template, as plain text."""
    if isinstance(template, str):
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        return template
    if isinstance(template, list):
        return [fill(item, values) for item in template]
    if isinstance(template, dict):
        return {key: fill(item, values) for key, item in template.items()}
    return template


def fill_path(template: str, values: dict[str, str]) -> str:
    return str(fill(template, {name: quote(value, safe="") for name, value in values.items()}))


# --- configuration ------------------------------------------------------------------------

_DOTTED = r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$"
"""A dotted JSON path: ``data.id``, ``data.items.0.item.id``."""
_OPTIONAL_DOTTED = r"^$|" + _DOTTED


class Call(BaseModel):
    """One HTTP call: a method and a path template relative to the target's base URL."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/")


class SearchPages(BaseModel):
    """How a search answer says that more results follow, so Ponte reads every page
    before it decides there is one match (or none).

    - ``next_url``: ``path`` is where the answer holds the next page's URL (``next``);
      empty or missing: the last page. It must stay on the target's host.
    - ``cursor``: ``path`` holds the next cursor or offset (``additional_data.pagination.
      next_start``), sent back as the query parameter ``param``.
    - ``page``: the query parameter ``param`` counts pages from ``first``; an empty page
      is the end.
    - ``link_header``: the ``Link: <...>; rel="next"`` header (RFC 8288).

    ``more`` (optional) is the path of a boolean saying whether more follow
    (``additional_data.pagination.more_items_in_collection``)."""

    model_config = ConfigDict(extra="forbid")

    style: Literal["next_url", "cursor", "page", "link_header"]
    path: str | None = Field(default=None, pattern=_DOTTED)
    param: str | None = None
    more: str | None = Field(default=None, pattern=_DOTTED)
    first: int = 1
    max_pages: int = Field(default=20, gt=0, le=1000)
    """A search still saying "more" after this many pages is refused, not guessed."""

    @model_validator(mode="after")
    def _complete(self) -> SearchPages:
        needs = {"next_url": ("path",), "cursor": ("path", "param"), "page": ("param",)}
        for name in needs.get(self.style, ()):
            if getattr(self, name) is None:
                raise ValueError(f"pages: style {self.style} needs {name}")
        return self


class SearchCall(Call):
    """Search by the natural key: ``{key}`` in the path or in a query value; ``results``
    is the path of the list of matches in the answer, ``id`` the path of the id in one.

    A result counts as a match only when its natural-key value, at ``key`` in the result
    (or, without ``key``, in the record read back by the object's ``read`` call), equals
    the key exactly after ``match``: a CRM's search may match substrings ("ria@" finds
    "maria@"), words, or anything its index thinks is close."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    query: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] | None = None
    results: str = Field(default="", pattern=_OPTIONAL_DOTTED)
    id: str = Field(default="id", pattern=_DOTTED)
    key: str | None = Field(default=None, pattern=_DOTTED)
    """Path of the natural-key value in one result (``item.custom_fields.cnpj``)."""
    match: KeyMatch = "exact"
    """``exact``, ``casefold`` (e-mails) or ``digits`` (a CNPJ with or without dots)."""
    pages: SearchPages | None = None
    """Without it, the first answer is taken as all there is."""

    @model_validator(mode="after")
    def _uses_key(self) -> SearchCall:
        texts = [self.path, *self.query.values(), repr(self.body)]
        if not any("{key}" in text for text in texts):
            raise ValueError("search: {key} appears in neither path, query nor body")
        return self


class AssociateCall(Call):
    """Link two records: ``{from_id}`` and ``{to_id}`` in the path or the body."""

    body: dict[str, Any] | None = None


class HeaderAuth(BaseModel):
    """A static header on every call: ``Authorization: Bearer ${TOKEN}``, ``X-Api-Key``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: Literal["header"]
    header: str = "Authorization"
    value: str = Field(repr=False)


class LoginAuth(BaseModel):
    """A login call whose token is reused until shortly before it expires, and renewed
    once when a call answers 401 (that call is then retried once)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: Literal["login"]
    method: Literal["POST", "PUT", "GET"] = "POST"
    path: str = Field(pattern=r"^/")
    body: dict[str, Any] = Field(default_factory=dict, repr=False)
    """JSON body, credentials as ``${ENV}`` (expanded when the targets file is read)."""
    token: str = Field(pattern=_DOTTED)
    """Path of the token in the login answer."""
    header: str = "Authorization"
    prefix: str = "Bearer "
    expires_in: str | None = Field(default=None, pattern=_DOTTED)
    """Path of the token's lifetime in seconds in the answer, if the API says it."""
    expires_after_s: float | None = Field(default=None, gt=0)
    """The lifetime when the answer does not say it (documented by the CRM)."""
    refresh_margin_s: float = Field(default=30.0, ge=0)
    """Renew this long before the expiry, so no call carries a token about to lapse."""


class RestObject(ObjectMapping):
    """One CRM-model entity as the REST API writes it. ``properties`` (column -> dotted
    target path) build the body; ``constants`` (dotted path -> value) are added to it."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    create: Call
    id_path: str = Field(default="id", pattern=_OPTIONAL_DOTTED)
    """Path of the new record's id in the create answer."""
    update: Call
    search: SearchCall | None = None
    delete: Call | None = None
    read: Call | None = None
    read_path: str = Field(default="", pattern=_OPTIONAL_DOTTED)
    """Path of the record in the read answer (``data``); empty: the whole answer."""
    associate: dict[str, AssociateCall] = Field(default_factory=dict)
    """Object type linked to -> the call that links a record to it."""
    constants: dict[str, Any] = Field(default_factory=dict)
    natural_key: str | None = None
    """CRM-model column that identifies the record in the CRM (``document``)."""
    search_before_create: bool = True
    create_error_may_have_saved: bool = False
    create_error_statuses: list[int] = Field(default_factory=list)
    create_returns_no_id: bool = False
    verify_updates: bool = True
    """Before an update by a CRM id stored from an earlier delivery, read the record
    (``read``) and refuse the update if it carries another natural key
    (``check_same_record``): one more call per such update, in exchange for never
    overwriting a record that is not this one. Needs ``natural_key`` and ``read``."""

    expressions: dict[str, PropertyExpression] = Field(default_factory=dict)
    """Target path -> an expression over the row's columns (``ponte.deliver.expressions``).
    Written in YAML inside ``properties`` (``first_name: {template: "{name}", split:
    first}``): a text value there is ``column: property`` as always, an object value is
    ``property: expression``; ``_expressions_from_properties`` moves the latter here."""
    omit_null: bool = False
    """Leave null properties out of the body instead of sending ``null`` (many CRMs
    refuse explicit nulls, or erase the value they hold)."""

    @model_validator(mode="before")
    @classmethod
    def _expressions_from_properties(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
            return data
        if "expressions" in data:
            raise ValueError("expressions: write them inside properties (property: {...})")
        plain = {k: v for k, v in data["properties"].items() if not isinstance(v, dict)}
        computed: dict[str, PropertyExpression] = {}
        for path, written in data["properties"].items():
            if isinstance(written, dict):
                # Validated here so the error names properties.<path>, where it is written.
                try:
                    computed[path] = PropertyExpression.model_validate(written)
                except ValidationError as error:
                    raise ValueError(_expression_problems(f"properties.{path}", error)) from None
        return {**data, "properties": plain, "expressions": computed}

    def values_for(self, row: dict[str, Any]) -> dict[str, Any]:
        """Plain columns, then expressions; raises ``PropertyRefused`` naming the property
        when one cannot be computed (the record is refused, see ``expressions``)."""
        values = super().values_for(row)
        for path, expression in self.expressions.items():
            values[path] = expression.evaluate(row, f"properties.{path}")
        if self.omit_null:
            values = {path: value for path, value in values.items() if value is not None}
        return values

    def sent_properties(self) -> set[str]:
        return super().sent_properties() | set(self.expressions)

    @field_validator("update", "delete", "read")
    @classmethod
    def _uses_crm_id(cls, call: Call | None) -> Call | None:
        if call is not None and "{crm_id}" not in call.path:
            raise ValueError(f"path {call.path!r} has no {{crm_id}}")
        return call

    @field_validator("create_error_statuses")
    @classmethod
    def _error_statuses(cls, statuses: list[int]) -> list[int]:
        for status in statuses:
            if not 400 <= status <= 599:
                raise ValueError(f"{status} is not an HTTP error status")
        return statuses

    @model_validator(mode="after")
    def _consistent(self) -> RestObject:
        if self.natural_key is not None:
            computed = [p for p, e in self.expressions.items() if self.natural_key in e.columns()]
            if self.natural_key not in self.properties and computed:
                # Decided: the natural key is searched, compared and locked on as the column
                # holds it; a computed key would need the same expression applied to what
                # the CRM returns, so it is refused rather than half-supported.
                raise ValueError(
                    f"natural_key: {self.natural_key!r} is only sent through an expression "
                    f"(properties.{computed[0]}); map it plainly too "
                    f"({self.natural_key}: <property>), the key is searched as the column holds it"
                )
            if self.natural_key not in self.properties:
                raise ValueError(
                    f"natural_key: {self.natural_key!r} must be one of the mapped properties' "
                    "columns, so its value is sent and can be searched by"
                )
            if self.search is None:
                raise ValueError("natural_key: set search too (how to find a record by it)")
            if self.verify_updates and self.read is None:
                raise ValueError(
                    "verify_updates: set a read call, so an update by a stored CRM id can "
                    "check the record's natural key first (or verify_updates: false to skip "
                    "that check)"
                )
            if self.search.key is None and self.read is None:
                raise ValueError(
                    "search: set key (where a result holds the natural key) or a read call, "
                    "so Ponte can check that a search result really has this key"
                )
        for rule in ("create_error_may_have_saved", "create_returns_no_id"):
            if getattr(self, rule) and self.natural_key is None:
                raise ValueError(f"{rule}: needs natural_key and search to find the record")
        plain = super().sent_properties()
        for path in sorted(set(self.expressions) & plain):
            raise ValueError(f"properties.{path}: {path!r} is also mapped from a column")
        overlap = set(self.constants) & self.sent_properties()
        if overlap:
            raise ValueError(f"constants: {sorted(overlap)} also mapped from a column")
        paths = self.sent_properties() | set(self.constants)
        for path, other in ((p, o) for p in sorted(paths) for o in sorted(paths)):
            if other.startswith(path + "."):
                raise ValueError(
                    f"{path!r} and {other!r}: one body path inside another (a value "
                    "cannot also be an object); map them to separate paths"
                )
        return self

    @property
    def key_path(self) -> str | None:
        """The target path holding the natural key's value in ``Outgoing.properties``."""
        return self.properties[self.natural_key] if self.natural_key else None


class RestTarget(Target):
    """``kind: rest``: the auth scheme and, per entity, the calls that write it."""

    # Errors name the field but never echo the input: it may hold a password or token.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: Literal["rest"]
    auth: Annotated[HeaderAuth | LoginAuth, Field(discriminator="type")] | None = None
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    """Sent on every call (an ``Accept`` the API insists on, a tenant id)."""
    objects: dict[str, RestObject]  # type: ignore[assignment]

    @field_validator("objects")
    @classmethod
    def _one_entity_per_object_type(cls, objects: dict[str, RestObject]) -> dict[str, RestObject]:
        seen: dict[str, str] = {}
        for entity, mapping in objects.items():
            _check_expression_columns(entity, mapping)
            if mapping.object_type in seen:
                raise ValueError(
                    f"objects.{entity}.object_type: {mapping.object_type!r} is already used "
                    f"by {seen[mapping.object_type]}"
                )
            seen[mapping.object_type] = entity
        return objects


def _expression_problems(where: str, error: ValidationError) -> str:
    """``properties.phone: phone: set region ...``: each problem under the property's own
    path, without pydantic's "Value error, " prefix (never the input: it is not echoed)."""
    problems = []
    for item in error.errors(include_input=False):
        at = ".".join([where, *(str(step) for step in item["loc"])])
        problems.append(f"{at}: {str(item['msg']).removeprefix('Value error, ')}")
    return "; ".join(problems)


def _check_expression_columns(entity: str, mapping: RestObject) -> None:
    """What ``Target`` checks of plain properties, for the columns expressions read: they
    exist, and are neither ``id`` nor a reference column (Ponte's own row ids)."""
    model = crm_model()
    if entity not in model:
        return  # Target's own validator names the unknown entity
    columns = set(model.entity(entity).all_columns)
    references = model.references_of(entity)
    for path, expression in mapping.expressions.items():
        where = f"objects.{entity}.properties.{path}"
        for column in expression.columns():
            if column not in columns:
                raise ValueError(f"{where}: {column!r} is not a column of {entity}")
            if column == "id":
                raise ValueError(f"{where}: 'id' is Ponte's own row id, meaningless to the CRM")
            if column in references:
                raise ValueError(
                    f"{where}: {column!r} holds Ponte's own row id of a {references[column]}, "
                    f"not its id in the CRM; send it with 'references: {{{column}: {path}}}'"
                )


# --- the connector ------------------------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class RestConnector:
    def __init__(
        self,
        target: RestTarget,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        locks: KeyLocks | None = None,
    ) -> None:
        self._target = target
        self._client = client
        self._bucket = bucket
        self._objects = {mapping.object_type: mapping for mapping in target.objects.values()}
        self._calls = asyncio.Semaphore(target.concurrency)
        self._token: str | None = None
        self._token_expires = float("inf")
        self._login_lock = asyncio.Lock()
        self._locks = locks or KeyLocks(target.id)
        self._learned: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._uncertain: set[tuple[str, str]] = set()
        """(object type, external id) whose create failed in a way that may have saved it."""

    @classmethod
    def for_target(
        cls,
        target: RestTarget,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        locks: KeyLocks | None = None,
    ) -> RestConnector:
        """``locks``: shared with other replicas when built with the key-lock pool
        (``connectors.build_connector``); by default this process only."""
        return cls(target, client, bucket, locks)

    # --- HTTP, auth ---

    async def _login(self, stale: str | None) -> str:
        """A valid token. ``stale``: the token a 401 came back for; a new one is fetched
        unless another call already replaced it (one login for many concurrent 401s)."""
        auth = self._target.auth
        assert isinstance(auth, LoginAuth)
        async with self._login_lock:
            fresh = time.monotonic() < self._token_expires - auth.refresh_margin_s
            if self._token is not None and self._token != stale and fresh:
                return self._token
            what = f"login {auth.method} {auth.path}"
            await self._bucket.acquire()
            try:
                response = await self._client.request(
                    auth.method, auth.path, json=auth.body or None, headers=self._target.headers
                )
            except (httpx.TimeoutException, httpx.TransportError) as error:
                raise transport_failed(error, what) from None
            raise_for(response, what)
            answer = _json(response)
            token = get_path(answer, auth.token)
            if not isinstance(token, str) or not token:
                raise TerminalError(f"{what}: no token at {auth.token!r} in the answer")
            lifetime = get_path(answer, auth.expires_in) if auth.expires_in else None
            if not isinstance(lifetime, int | float):
                lifetime = auth.expires_after_s
            self._token = token
            self._token_expires = time.monotonic() + float(lifetime) if lifetime else float("inf")
            return token

    async def _auth_headers(self, stale: str | None = None) -> tuple[dict[str, str], str | None]:
        auth = self._target.auth
        if isinstance(auth, HeaderAuth):
            return {auth.header: auth.value}, None
        if isinstance(auth, LoginAuth):
            token = await self._login(stale)
            return {auth.header: auth.prefix + token}, token
        return {}, None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One call through the bucket, with auth; a 401 under a login token renews the
        token once and repeats the call once. Raises RetryableError for transport errors
        and 429; returns every other answer for the caller to judge (a 404 or a 5xx on
        create means something there)."""
        what = f"{method} {path}"
        headers, token = await self._auth_headers()
        for renewed in (False, True):
            await self._bucket.acquire()
            try:
                response = await self._client.request(
                    method, path, json=json, params=params,
                    headers={**self._target.headers, **headers},
                )  # fmt: skip
            except (httpx.TimeoutException, httpx.TransportError) as error:
                raise transport_failed(error, what) from None
            if response.status_code == 401 and token is not None and not renewed:
                headers, token = await self._auth_headers(stale=token)
                continue
            break
        if response.status_code == 429 or (
            response.status_code == 503 and retry_after_s(response.headers) is not None
        ):
            wait = retry_after_s(response.headers) or 10.0
            self._bucket.pause(wait)
            raise RetryableError(
                f"rate limited {response.status_code} on {what}",
                status=response.status_code,
                excerpt=response.text,
                retry_after=wait,
            )
        return response

    # --- one record ---

    def _learn(self, object_type: str, external_id: str, crm_id: str) -> str:
        self._learned[(object_type, external_id)] = crm_id
        self._learned.move_to_end((object_type, external_id))
        while len(self._learned) > LEARNED_IDS_KEPT:
            self._learned.popitem(last=False)
        return crm_id

    async def _search_results(self, mapping: RestObject, key: str) -> list[Any]:
        """Every result of the search for ``key``, page after page (``SearchPages``)."""
        search = mapping.search
        assert search is not None
        pages = search.pages
        values = {"key": key}
        what = f"search {mapping.object_type} by {mapping.natural_key}"
        path: str = fill_path(search.path, values)
        params: dict[str, str] | None = fill(search.query, values) or None
        body = fill(search.body, values)
        page = pages.first if pages else 0
        if pages is not None and pages.style == "page":
            params = {**(params or {}), str(pages.param): str(page)}
        found: list[Any] = []
        for _ in range(pages.max_pages if pages else 1):
            response = await self._request(search.method, path, params=params, json=body)
            raise_for(response, what)
            answer = _json(response)
            results = get_path(answer, search.results)
            if results is not None and not isinstance(results, list):
                raise TerminalError(f"{what}: {search.results!r} in the answer is not a list")
            found += results or []
            if pages is None or (pages.more and not get_path(answer, pages.more)):
                return found
            if pages.style == "page":
                if not results:
                    return found
                page += 1
                params = {**(params or {}), str(pages.param): str(page)}
                continue
            if pages.style == "cursor":
                cursor = get_path(answer, str(pages.path))
                if cursor in (None, "", False):
                    return found
                params = {**(params or {}), str(pages.param): str(cursor)}
                continue
            link = (
                get_path(answer, str(pages.path))
                if pages.style == "next_url"
                else response.links.get("next", {}).get("url")
            )
            if not link:
                return found
            path, params = self._same_host(str(link), what), None
        raise TerminalError(
            f"{what}: the CRM still has more results for {key!r} after "
            f"{pages.max_pages if pages else 1} pages; Ponte cannot be sure which record is "
            "this one (narrow the search, or raise pages.max_pages)"
        )

    def _same_host(self, link: str, what: str) -> str:
        """A next-page link, refused when it leaves the target's host: the call carries
        the target's credentials."""
        url = httpx.URL(link)
        if url.is_relative_url:
            return link
        base = self._client.base_url
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise TerminalError(
                f"{what}: the next page {url.scheme}://{url.host}:{url.port} is not the "
                "CRM's own address; the call would carry the target's credentials there"
            )
        return str(url)

    async def _search(self, mapping: RestObject, key: str) -> str | None:
        """The CRM id of the one record whose natural key is exactly ``key``; None: there
        is none, whatever else the search returned. Two or more exact matches are
        refused, listing them: Ponte does not guess which record is this one."""
        search = mapping.search
        assert search is not None
        what = f"search {mapping.object_type} by {mapping.natural_key}"
        candidates: dict[str, Any] = {}
        for item in await self._search_results(mapping, key):
            crm_id = get_path(item, search.id)
            if crm_id is None or crm_id == "" or isinstance(crm_id, dict | list):
                continue
            candidates.setdefault(str(crm_id), get_path(item, search.key) if search.key else None)
        if search.key is None:  # the results do not carry the key: read each candidate
            if len(candidates) > MAX_CANDIDATES_READ:
                raise TerminalError(
                    f"{what}: {len(candidates)} results for {key!r}, too many to read each "
                    "back; set search.key to where a result holds the natural key"
                )
            for crm_id in candidates:
                record = await self.read_back(mapping.object_type, crm_id)
                candidates[crm_id] = get_path(record, str(mapping.key_path)) if record else None
        exact = {
            crm_id: value
            for crm_id, value in candidates.items()
            if same_key(value, key, search.match)
        }
        if len(exact) > 1:
            listed = ", ".join(f"id {crm_id}: {value!r}" for crm_id, value in exact.items())
            raise TerminalError(
                f"{what}: {len(exact)} records in the CRM have {mapping.natural_key} "
                f"{key!r} ({listed}); merge them in the CRM, Ponte will not guess"
            )
        if not exact and candidates:
            log.info(
                "search results are not this record",
                extra={"object_type": mapping.object_type, "results": len(candidates)},
            )
        return next(iter(exact), None)

    async def _update(self, mapping: RestObject, crm_id: str, body: dict[str, Any]) -> bool:
        """Write ``body`` over the record; False: it is not there (404 or 410)."""
        call = mapping.update
        response = await self._request(
            call.method, fill_path(call.path, {"crm_id": crm_id}), json=body
        )
        if response.status_code in (404, 410):
            return False
        raise_for(response, f"update {mapping.object_type} {crm_id}")
        return True

    async def _create(
        self, mapping: RestObject, record: Outgoing, body: dict[str, Any], key: str | None
    ) -> str:
        call = mapping.create
        what = f"create {mapping.object_type}"
        uncertain = (mapping.object_type, record.external_id)
        may_have_saved = mapping.create_error_may_have_saved and key is not None
        try:
            response = await self._request(call.method, call.path, json=body)
        except RetryableError as error:
            if may_have_saved and error.status != 429:  # a timeout: saved or not, unknown
                self._uncertain.add(uncertain)
            raise
        status = response.status_code
        if may_have_saved and (status >= 500 or status in mapping.create_error_statuses):
            assert key is not None
            self._uncertain.add(uncertain)
            found = await self._search(mapping, key)
            if found is not None and await self._update(mapping, found, body):
                self._uncertain.discard(uncertain)
                return found
            raise RetryableError(
                f"{what} answered {status} and no record with {mapping.natural_key} {key!r} "
                "is there (yet); the create will be retried after a search",
                status=status,
                excerpt=response.text,
                retry_after=retry_after_s(response.headers),
            )
        raise_for(response, what)
        crm_id = get_path(_json(response), mapping.id_path)
        if crm_id is not None and crm_id != "":
            return str(crm_id)
        if mapping.create_returns_no_id and key is not None:
            found = await self._search(mapping, key)
            if found is not None:
                return found
            self._uncertain.add(uncertain)  # created, but the search cannot see it yet
            raise RetryableError(
                f"{what} answered {status} without an id and a search by "
                f"{mapping.natural_key} {key!r} does not find it yet"
            )
        raise TerminalError(
            f"{what} answered {status} without an id at {mapping.id_path!r}; if the CRM never "
            "returns one, set create_returns_no_id with a natural_key",
            status=status,
            excerpt=response.text,
        )

    async def _upsert_one(self, mapping: RestObject, record: Outgoing) -> str:
        """Write one record; its CRM id.

        Serialised per key: lookup-then-write is two calls, and two writers of the same key
        that both search before either creates would both create. The key is the natural
        key's value when there is one (two external ids can carry the same CNPJ, and the CRM
        must end up with one organisation), else the external id. ``KeyLocks`` holds it in
        this process and, with the key-lock pool, in every deliver replica (a PostgreSQL
        advisory lock). Different keys still run concurrently; the lock is only held for
        one record's calls.
        """
        key_path = mapping.key_path
        raw_key = record.properties.get(key_path) if key_path else None
        key = str(raw_key) if raw_key not in (None, "") else None
        body: dict[str, Any] = {}
        for path, value in mapping.constants.items():
            set_path(body, path, value)
        for path, value in record.properties.items():
            set_path(body, path, value)
        object_type = mapping.object_type
        # The lock is on the key as the CRM compares it: "11.222.333/0001-81" and
        # "11222333000181" are one organisation under match: digits, so one lock.
        match = mapping.search.match if mapping.search is not None else "exact"
        locked = normalise_key(key, match) if key else None
        lock_key = (
            f"{object_type}/key:{locked}" if locked else f"{object_type}/ext:{record.external_id}"
        )
        async with self._locks.hold([lock_key]):
            crm_id = self._learned.get((object_type, record.external_id)) or record.crm_id
            if (
                crm_id
                and await self._still_this_record(mapping, record, crm_id, key)
                and await self._update(mapping, crm_id, body)
            ):
                return self._learn(object_type, record.external_id, crm_id)
            uncertain = (object_type, record.external_id) in self._uncertain
            if key is not None and (mapping.search_before_create or uncertain):
                found = await self._search(mapping, key)
                if found is not None and await self._update(mapping, found, body):
                    self._uncertain.discard((object_type, record.external_id))
                    return self._learn(object_type, record.external_id, found)
            crm_id = await self._create(mapping, record, body, key)
            self._uncertain.discard((object_type, record.external_id))
            return self._learn(object_type, record.external_id, crm_id)

    async def _still_this_record(
        self, mapping: RestObject, record: Outgoing, crm_id: str, key: str | None
    ) -> bool:
        """The guard before an update by a CRM id stored from an earlier delivery (see
        ``RestObject.verify_updates``): raises ``RecordMismatch`` when the CRM's record
        has another natural key; False when it is gone (search, then create). An id this
        process learned itself, in this attempt or an earlier one, is not read again."""
        if (
            not mapping.verify_updates
            or mapping.read is None
            or key is None
            or crm_id != record.crm_id
            or (mapping.object_type, record.external_id) in self._learned
        ):
            return True
        found = await self.read_back(mapping.object_type, crm_id)
        if found is None:
            return False
        assert mapping.search is not None and mapping.key_path is not None
        check_same_record(
            what=f"{mapping.object_type} {crm_id} in the CRM",
            key_name=str(mapping.natural_key),
            found=get_path(found, mapping.key_path),
            key=key,
            last_delivered=record.crm_key,
            match=mapping.search.match,
        )
        return True

    def _mapping(self, object_type: str) -> RestObject:
        mapping = self._objects.get(object_type)
        if mapping is None:
            raise TerminalError(f"object type {object_type!r} is not configured")
        return mapping

    async def _bounded(self, work: Any) -> Any:
        async with self._calls:
            return await work

    # --- the Connector protocol ---

    async def upsert_batch(self, object_type: str, records: list[Outgoing]) -> BatchOutcome:
        mapping = self._mapping(object_type)
        results = await asyncio.gather(
            *(self._bounded(self._upsert_one(mapping, record)) for record in records),
            return_exceptions=True,
        )
        outcome = BatchOutcome()
        retryable: list[RetryableError] = []
        for record, result in zip(records, results, strict=True):
            if isinstance(result, TerminalError):
                excerpt = f": {result.excerpt}" if result.excerpt else ""
                outcome.failed[record.external_id] = f"{result}{excerpt}"
            elif isinstance(result, RetryableError):
                retryable.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                outcome.delivered[record.external_id] = result
                key = record.properties.get(mapping.key_path) if mapping.key_path else None
                if key not in (None, ""):
                    outcome.keys[record.external_id] = str(key)
        if retryable:
            # The records that worked are written; on the retry they are updates by the ids
            # learned now, so re-sending them is harmless.
            raise slowest(retryable)
        return outcome

    async def delete_batch(self, object_type: str, crm_ids: list[str]) -> None:
        mapping = self._mapping(object_type)
        call = mapping.delete
        if call is None:
            raise TerminalError(f"delete is not configured for {object_type}")

        async def delete(crm_id: str) -> None:
            response = await self._request(call.method, fill_path(call.path, {"crm_id": crm_id}))
            if response.status_code not in (404, 410):  # already gone is what we wanted
                raise_for(response, f"delete {object_type} {crm_id}")

        results = await asyncio.gather(
            *(self._bounded(delete(crm_id)) for crm_id in crm_ids), return_exceptions=True
        )
        if (error := first_to_raise(results)) is not None:
            raise error

    async def read_back(self, object_type: str, crm_id: str) -> dict[str, Any] | None:
        mapping = self._mapping(object_type)
        if mapping.read is None:
            raise TerminalError(f"read is not configured for {object_type}")
        response = await self._request(
            mapping.read.method, fill_path(mapping.read.path, {"crm_id": crm_id})
        )
        if response.status_code in (404, 410):
            return None
        raise_for(response, f"read {object_type} {crm_id}")
        record = get_path(_json(response), mapping.read_path)
        return record if isinstance(record, dict) else None

    async def associate(self, from_type: str, to_type: str, pairs: list[tuple[str, str]]) -> None:
        call = self._mapping(from_type).associate.get(to_type)
        if call is None:
            raise TerminalError(
                f"associations from {from_type} to {to_type} are not configured for target "
                f"{self._target.id} (objects.<entity>.associate.{to_type})"
            )

        async def link(from_id: str, to_id: str) -> None:
            values = {"from_id": from_id, "to_id": to_id}
            response = await self._request(
                call.method, fill_path(call.path, values), json=fill(call.body, values)
            )
            raise_for(response, f"associate {from_type} {from_id} -> {to_type} {to_id}")

        results = await asyncio.gather(
            *(self._bounded(link(a, b)) for a, b in pairs), return_exceptions=True
        )
        # One call per pair: a refused pair is reported as such, the others stay linked.
        refused = {
            pair: f"{result}: {result.excerpt}" if result.excerpt else str(result)
            for pair, result in zip(pairs, results, strict=True)
            if isinstance(result, TerminalError)
        }
        error = first_to_raise(r for r in results if not isinstance(r, TerminalError))
        if error is not None:
            raise error
        if refused:
            first = next(r for r in results if isinstance(r, TerminalError))
            raise PairsRefused(refused, status=first.status or 400, excerpt=first.excerpt)
