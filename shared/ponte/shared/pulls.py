"""Pull definitions: which ERP source is pulled, when, from where, and how the answer
becomes envelope rows. Read from the YAML file ``PONTE_PULLS_FILE`` (top-level ``pulls:``
list; see ``pulls.example.yaml``), secrets written as ``${ENV_VAR}``.

Two kinds, told apart by ``kind`` (absent means ``rest``, so files written before the FTP
kind existed stay valid): ``rest`` asks an ERP's REST API (``request`` + ``rows``);
``ftp_folder`` takes the CSV/.txt/.xlsx files an ERP leaves in a folder on an FTP server
(``ftp``, seed "Excel ou .txt público"). Both share ``source_id``, ``active`` and
``schedule``, so the scheduler, its locks and the run records treat them alike.

A definition is validated on its own here (errors name ``pulls[i].<field>``) and against
the sources in PostgreSQL by ``check_sources`` (the source must exist and be an ERP): a pull
produces the same raw events a webhook of that source would, so it needs its source.

JSON paths are dotted keys from the root of the response (``data.items``; a number picks a
list element, ``""`` is the root itself): enough for the REST APIs ERPs expose, and
nothing to learn.
"""

from __future__ import annotations

import codecs
import logging
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ponte.shared.config_files import load_entries
from ponte.shared.source_kinds import spec_of
from ponte.shared.sources import SourceConfig
from ponte.shared.validation_errors import first_problem

log = logging.getLogger(__name__)

ONLINE_INTERVAL_S = 20
"""Seed 001's "Online": the ERP is asked for changes every 20 seconds."""
FREQUENT_WARNING_MINUTES = 30
"""Below this, ``every_minutes`` is allowed but logged: the seed warns that frequent full
syncs load the ERP, and most ERPs' REST APIs are rate limited."""
_HH_MM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


class Schedule(BaseModel):
    """Exactly one of ``daily`` ("Diário às HH:MM"), ``every_minutes`` ("A cada N
    minutos") or ``online`` (every 20 s)."""

    model_config = ConfigDict(extra="forbid")

    daily: str | None = Field(default=None, description="Local time of day, HH:MM.")
    timezone: str = Field(
        default="America/Sao_Paulo", description="Time zone of ``daily`` (IANA name)."
    )
    every_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    online: bool = False

    @field_validator("daily")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None and not _HH_MM.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not a time of day HH:MM (00:00 to 23:59)")
        return value.strip() if value else value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        chosen = [
            name
            for name, is_set in (
                ("daily", self.daily is not None),
                ("every_minutes", self.every_minutes is not None),
                ("online", self.online),
            )
            if is_set
        ]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of daily (HH:MM), every_minutes (N) or online (true); "
                f"got {', '.join(chosen) or 'none'}"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        """The schedule as seed 001's screen says it."""
        if self.daily is not None:
            return f"Diário às {self.daily} ({self.timezone})"
        if self.every_minutes is not None:
            return f"A cada {self.every_minutes} minutos"
        return f"Online (a cada {ONLINE_INTERVAL_S} s)"


class Cursor(BaseModel):
    """The incremental cursor: sent as query parameter ``param`` (omitted on the very first
    run unless ``initial`` is set), and read back after the run from ``response_path`` (the
    last page that has it wins) or as the greatest ``record_field`` among the records
    pulled. Saved only once every pulled record is in Kafka."""

    model_config = ConfigDict(extra="forbid")

    param: str = Field(min_length=1, description="Query parameter, e.g. updated_since.")
    response_path: str | None = Field(
        default=None, description="Where the next cursor is in a response, e.g. meta.next_since."
    )
    record_field: str | None = Field(
        default=None,
        description="Or: the greatest value of this record field (e.g. updated_at).",
    )
    initial: str | None = Field(default=None, description="Cursor of the very first run.")

    @model_validator(mode="after")
    def _one_origin(self) -> Cursor:
        if (self.response_path is None) == (self.record_field is None):
            raise ValueError("set exactly one of response_path or record_field")
        return self


class Pagination(BaseModel):
    """How to get the next page of one run:

    - ``next_token``: the response's ``token_path`` holds a token, sent back as ``param``;
      the run ends when it is missing or empty.
    - ``next_link``: the response's ``link_path`` holds the next page's URL (absolute, or
      relative to ``base_url``); the run ends when it is missing or empty.
    - ``page_number``: ``param`` counts up from ``start`` until a page has no records.
    """

    model_config = ConfigDict(extra="forbid")

    style: Literal["next_token", "next_link", "page_number"]
    param: str | None = None
    token_path: str | None = None
    link_path: str | None = None
    start: int = 1
    max_pages: int = Field(
        default=10_000, ge=1, description="A run stops with an error past this many pages."
    )

    @model_validator(mode="after")
    def _fields_of_style(self) -> Pagination:
        needed = {
            "next_token": ("param", "token_path"),
            "next_link": ("link_path",),
            "page_number": ("param",),
        }[self.style]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"style {self.style} needs {', '.join(missing)}")
        return self


class RestRequest(BaseModel):
    """The ERP's REST endpoint. ``headers`` carry the authentication, written as
    ``${ENV_VAR}`` in the file; they are never logged nor stored in a run's error."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://[^\s]+$")
    path: str = Field(default="", description="Appended to base_url, e.g. /api/v1/pedidos.")
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0)
    cursor: Cursor | None = None
    pagination: Pagination | None = None

    @field_validator("headers")
    @classmethod
    def _headers_not_empty(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not value.strip():
                raise ValueError(f"header {name} is empty (is its ${{ENV_VAR}} set?)")
        return headers

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + ("/" + self.path.lstrip("/") if self.path else "")


class RowMapping(BaseModel):
    """How a response becomes envelope rows: the list at ``list_path`` holds one record per
    element; fields are renamed (``renames``: ERP API name -> envelope name) and the rest
    kept as they are, so the transform's mapping reads them like a webhook's rows."""

    model_config = ConfigDict(extra="forbid")

    list_path: str = Field(description="Where the records are, e.g. data.")
    table: str = Field(min_length=1, max_length=120, description="The ERP table, e.g. Pedido.")
    key: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Key fields (after renames); default: the source's mapping's key.",
    )
    renames: dict[str, str] = Field(default_factory=dict)
    occurred_at_field: str | None = Field(
        default=None,
        description="A record field with its change time (after renames); default: run start.",
    )
    operation: Literal["upsert", "delete"] = "upsert"


class _PullBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    active: bool = True
    schedule: Schedule


class RestPullDefinition(_PullBase):
    kind: Literal["rest"] = "rest"
    request: RestRequest
    rows: RowMapping


class FtpFolder(BaseModel):
    """A folder on the customer's FTP server where the ERP leaves one file per table
    export. The seed warns these servers are unstable: every operation has a timeout, and
    a run that loses the server fails and is simply the next run's work.

    ``table`` names the ERP table every file feeds; or ``table_from_name`` is a regular
    expression matched against the file name whose group ``table`` (or first group) is the
    table (``^(?P<table>[A-Za-z ]+)_\\d+\\.csv$`` takes ``Pedido`` from
    ``Pedido_20241114.csv``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=21, ge=1, le=65535)
    username: str = "anonymous"
    password: SecretStr = Field(default=SecretStr(""), description="Write it as ${ENV_VAR}.")
    tls: bool = Field(default=False, description="Explicit FTPS (AUTH TLS), data channel too.")
    directory: str = Field(default="/", min_length=1)
    patterns: list[str] = Field(
        default_factory=lambda: ["*.csv", "*.txt", "*.xlsx"],
        min_length=1,
        description="Shell patterns of the file names taken (case-insensitive).",
    )
    table: str | None = Field(default=None, min_length=1, max_length=120)
    table_from_name: str | None = None
    delimiter: str | None = Field(
        default=None, min_length=1, max_length=1, description="CSV; default: sniffed."
    )
    encoding: str | None = Field(
        default=None, description="CSV; default: UTF-8, else Windows-1252/Latin-1."
    )
    sheet: str | None = Field(default=None, description="Excel sheet; default: the first.")
    operation: Literal["upsert", "delete"] = "upsert"
    after: Literal["keep", "move"] = Field(
        default="keep", description="move: into processed_dir once every row is in Kafka."
    )
    processed_dir: str = Field(default="processed", min_length=1)
    settle_s: float = Field(
        default=60.0,
        ge=0,
        description="A file modified less than this long ago may still be written: skipped.",
    )
    recheck_s: float = Field(
        default=3.0,
        ge=0,
        description="Candidates are listed twice this far apart; a file that changed is skipped.",
    )
    timeout_s: float = Field(default=30.0, gt=0)
    max_file_bytes: int = Field(
        default=50 * 1024 * 1024,
        gt=0,
        description="A larger file is refused before download (files are parsed in memory).",
    )

    @field_validator("table_from_name")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            pattern = re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        if "table" not in pattern.groupindex and pattern.groups < 1:
            raise ValueError("needs a group (?P<table>...) or a first group naming the table")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None

    @model_validator(mode="after")
    def _one_table_origin(self) -> FtpFolder:
        if (self.table is None) == (self.table_from_name is None):
            raise ValueError("set exactly one of table or table_from_name")
        return self

    def table_of(self, name: str) -> str | None:
        """The table a file feeds, or None when its name does not say one."""
        if self.table is not None:
            return self.table
        assert self.table_from_name is not None
        match = re.search(self.table_from_name, name)
        if match is None:
            return None
        table = match.group("table") if "table" in match.re.groupindex else match.group(1)
        return table.strip() or None


class FtpFolderPullDefinition(_PullBase):
    kind: Literal["ftp_folder"]
    ftp: FtpFolder


def _kind_of(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("kind", "rest"))
    return str(getattr(entry, "kind", "rest"))


PullDefinition: TypeAlias = Annotated[
    Annotated[RestPullDefinition, Tag("rest")]
    | Annotated[FtpFolderPullDefinition, Tag("ftp_folder")],
    Discriminator(_kind_of),
]
"""A pull of either kind; ``kind`` picks which (absent: ``rest``)."""
_DEFINITION = TypeAdapter[RestPullDefinition | FtpFolderPullDefinition](PullDefinition)


def parse_definitions(entries: list[Any], where: str = "pulls") -> list[PullDefinition]:
    """Validate ``pulls:`` entries; the error names ``pulls[i].field`` and says why."""
    definitions: list[PullDefinition] = []
    for index, entry in enumerate(entries):
        try:
            definition = _DEFINITION.validate_python(entry)
        except ValidationError as error:
            if error.errors()[0]["type"] == "union_tag_invalid":
                raise ValueError(
                    f"{where}[{index}].kind: {_kind_of(entry)!r} is not rest or ftp_folder"
                ) from None
            # The first step of the location is the kind's tag; the file's fields follow.
            location, reason = first_problem(error, skip=1)
            field = f"{where}[{index}]" + (f".{location}" if location else "")
            raise ValueError(f"{field}: {reason}") from None
        every = definition.schedule.every_minutes
        if every is not None and every < FREQUENT_WARNING_MINUTES:
            log.warning(
                "pull scheduled more often than every 30 minutes; check the ERP can take it",
                extra={"source": definition.source_id, "every_minutes": every},
            )
        definitions.append(definition)
    seen: set[str] = set()
    for index, definition in enumerate(definitions):
        if definition.source_id in seen:
            raise ValueError(
                f"{where}[{index}].source_id: source {definition.source_id!r} has two pulls"
            )
        seen.add(definition.source_id)
    return definitions


def load_pulls_file(path: Path) -> list[PullDefinition]:
    return parse_definitions(load_entries(path, "pulls"))


def check_sources(
    definitions: list[PullDefinition], sources: dict[str, SourceConfig]
) -> list[PullDefinition]:
    """Every pull must name an existing source of kind erp: its events are that source's."""
    for index, definition in enumerate(definitions):
        source = sources.get(definition.source_id)
        if source is None:
            raise ValueError(
                f"pulls[{index}].source_id: no source {definition.source_id!r} "
                "(add it to the sources file first)"
            )
        if not spec_of(source.kind).pulls_and_files:
            raise ValueError(
                f"pulls[{index}].source_id: source {definition.source_id!r} is "
                f"{source.kind.value}; only erp sources can be pulled"
            )
    return definitions


def check_keys(
    definitions: list[PullDefinition], mapping_keys: dict[str, dict[str, list[str]]]
) -> None:
    """A definition's ``key`` may only restate its table's key in the source's mapping:
    records must be keyed as the transform keys them, or one record's pulled and
    webhook events would land in different partitions."""
    for index, definition in enumerate(definitions):
        if not isinstance(definition, RestPullDefinition):
            continue  # an FTP file's table is known per file; keyed by the mapping only
        declared = definition.rows.key
        mapped = mapping_keys.get(definition.source_id, {}).get(definition.rows.table)
        if declared is not None and mapped is not None and declared != mapped:
            raise ValueError(
                f"pulls[{index}].rows.key: {declared} differs from the mapping's key "
                f"{mapped} of table {definition.rows.table!r}"
            )


def json_path(document: Any, path: str) -> Any:
    """The value at a dotted path, or None when any step is missing."""
    value = document
    for step in [part for part in path.split(".") if part] if path else []:
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and step.lstrip("-").isdigit():
            position = int(step)
            value = value[position] if -len(value) <= position < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


# --- when a definition's runs fall ---------------------------------------------------


def next_run(definition: PullDefinition, now: datetime) -> datetime:
    """The first scheduled run strictly after ``now`` (aware, UTC).

    ``daily`` is a wall-clock time in the schedule's zone (so it stays at 02:00 local across
    a DST change); ``every_minutes`` and ``online`` are on a grid from the Unix epoch, the
    same on every replica."""
    schedule = definition.schedule
    if schedule.daily is not None:
        hour, minute = (int(part) for part in schedule.daily.split(":"))
        local = now.astimezone(schedule.zone)
        day = local.date()
        for _ in range(3):
            candidate = datetime(
                day.year, day.month, day.day, hour, minute, tzinfo=schedule.zone
            ).astimezone(UTC)
            if candidate > now:
                return candidate
            day += timedelta(days=1)
        raise AssertionError("unreachable: a day later is always after now")
    return _grid(_interval_s(definition), now, after=True)


def previous_slot(definition: PullDefinition, now: datetime) -> datetime:
    """The latest scheduled run at or before ``now``."""
    schedule = definition.schedule
    if schedule.daily is not None:
        slot = next_run(definition, now - timedelta(days=1, seconds=1))
        while (following := next_run(definition, slot)) <= now:
            slot = following
        return slot
    return _grid(_interval_s(definition), now, after=False)


def _interval_s(definition: PullDefinition) -> int:
    every = definition.schedule.every_minutes
    return every * 60 if every is not None else ONLINE_INTERVAL_S


def _grid(interval_s: int, now: datetime, *, after: bool) -> datetime:
    step = math.floor(now.timestamp() / interval_s)
    if after:
        step += 1
    return datetime.fromtimestamp(step * interval_s, UTC)
