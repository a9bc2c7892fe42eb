"""A mapping's dry run: what sample deliveries would become, with nothing written.

``ponte mapping check <source_id> --sample FILE`` and the transform's
``POST /sources/{source_id}/mapping/check`` both run ``check`` then, when a database is at
hand, ``check_references``. Per table and field they report what would be written (entity,
key, typed columns), what would be refused and why (field path and reason), which fields
the mapping does not place (they would land in ``extra``), which rows skip rules leave out,
and which references would park (looked up read-only; without a database each says "not
checked: no database" rather than guessing).

Why this lives in the transform, and its endpoint in the transform's API rather than in
ops: a dry run is only worth something if it runs the very code the transform runs
(``decode.decode_event``: the shop adapters, ``normalize``, the skip rules), and that
code is the transform's. Ops may not import the transform (the import contract), and
moving normalisation into ``ponte.shared`` would hand every service the transform's core
to carry. The transform already serves the operator's read API over its own work
(``/rejections``, ``/unmapped-fields``, ``/skipped-rows``) under the same ops token, so
the check sits beside them; the CLI imports this module inside its command only.

Samples are what a consultant has at hand (``parse_samples``): the bodies posted to
ingest (an ERP envelope ``{id, occurred_at, table, rows}``), a shop's resource wrapped as
``{"topic": "orders/create", "body": {...}}`` (the topic travels in a header), or Ponte
raw events (a dead letter's ``event``); one document, a list, or JSON lines. An envelope
is split into record events as ingest splits it (one per row, ids from the envelope's id).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, assert_never

from pydantic import ValidationError

from ponte.shared import strict_json
from ponte.shared.events import ErpEnvelope, Operation, RawEvent, delivery_id_for, erp_record_key
from ponte.shared.mapping import Mapping
from ponte.shared.source_kinds import SourceKind, spec_of, verb_of
from ponte.shared.validation_errors import first_problem
from ponte.transform.decode import Decoded, decode_event
from ponte.transform.normalize import NormalizedRecord, NormalizedRow, RecordRejected
from ponte.transform.repository.tables import table_of

MAX_SAMPLES = 1000
"""Record events one check runs; a dry run is for a handful of real examples."""

NOT_CHECKED = "not checked: no database"


class SampleError(ValueError):
    """A sample that is not a delivery this source could send; names where and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class ReferenceCheck:
    column: str
    field: str
    target_entity: str
    target_key: str
    on_missing: str
    outcome: str = NOT_CHECKED
    """``found``, ``in sample`` (written by the same samples), ``would park``, ``would
    create a placeholder`` (``stub``), or ``not checked: no database``."""
    target_source: str | None = None
    """The target's source when the mapping names another (``source:``)."""
    by: str | None = None
    """The target's column matched instead of its key (``by:``)."""

    def target(self) -> str:
        """The target as a person reads it: ``company 'E1'``, ``company document '...'
        of source 'erp-main'``."""
        how = f"{self.by} " if self.by else ""
        where = f" of source {self.target_source!r}" if self.target_source else ""
        return f"{self.target_entity} {how}{self.target_key!r}{where}"


@dataclass
class WrittenRow:
    event_id: str
    table: str
    entity: str
    key: str
    operation: str
    columns: dict[str, Any]
    """Column -> the typed value as JSON (decimals as text, dates ISO 8601)."""
    types: dict[str, str]
    """Column -> the Python type the value was read as (``Decimal``, ``date``, ``NoneType``)."""
    extra: dict[str, Any]
    references: list[ReferenceCheck]


@dataclass
class RefusedRecord:
    event_id: str
    table: str
    record_key: str
    code: str
    field: str | None
    reason: str


@dataclass
class SkippedSample:
    event_id: str
    table: str
    rule: str
    reason: str | None
    path: str


@dataclass
class UnmappedSample:
    table: str
    field: str
    """``*`` when the whole table is unknown to the mapping."""
    occurrences: int


@dataclass
class DryRunReport:
    source_id: str
    kind: str
    mapping: str
    """Where the mapping came from (a file, the shipped default, the request body)."""
    events: int
    written: list[WrittenRow] = field(default_factory=list)
    refused: list[RefusedRecord] = field(default_factory=list)
    skipped: list[SkippedSample] = field(default_factory=list)
    unmapped: list[UnmappedSample] = field(default_factory=list)
    references_checked: bool = False
    ok: bool = True
    """Everything maps: nothing would be refused (skips and parks are not failures)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# -- samples -----------------------------------------------------------------------------


def parse_samples(
    data: bytes | str | Any,
    kind: SourceKind,
    source_id: str,
    mapping: Mapping,
    received_at: datetime | None = None,
) -> list[RawEvent]:
    """Record events from sample deliveries: bytes or text (one JSON document, a list, or
    JSON lines), or an already parsed document. Raises ``SampleError`` naming the sample
    (``samples[2].rows``) and the reason."""
    items = _documents(data) if isinstance(data, bytes | str) else data
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise SampleError("samples", "give one delivery, a list of them, or JSON lines")
    now = received_at or datetime.now(UTC)
    events: list[RawEvent] = []
    for index, item in enumerate(items):
        events += _events_of(item, f"samples[{index}]", kind, source_id, mapping, now)
        if len(events) > MAX_SAMPLES:
            raise SampleError("samples", f"more than {MAX_SAMPLES} records; check a few")
    return events


def _documents(data: bytes | str) -> Any:
    raw = data.encode() if isinstance(data, str) else data
    try:
        return strict_json.loads(raw, max_depth=strict_json.RAW_EVENT_DEPTH)
    except strict_json.JsonRefused as whole:
        lines = [line for line in raw.splitlines() if line.strip()]
        if len(lines) < 2:
            raise SampleError("samples", f"not JSON: {whole.message}") from None
    documents = []
    for number, line in enumerate(lines, start=1):
        try:
            documents.append(strict_json.loads(line, max_depth=strict_json.RAW_EVENT_DEPTH))
        except strict_json.JsonRefused as refused:
            raise SampleError(f"line {number}", f"not JSON: {refused.message}") from None
    return documents


def _events_of(
    item: Any, where: str, kind: SourceKind, source_id: str, mapping: Mapping, now: datetime
) -> list[RawEvent]:
    if not isinstance(item, dict):
        raise SampleError(where, "a sample must be a JSON object")
    if "payload" in item and "event_id" in item:  # a raw event, e.g. a dead letter's
        return [_validated(RawEvent, item, where)]
    body = spec_of(kind).body
    match body:
        case "envelope":
            return _envelope_events(item, where, kind, source_id, mapping, now)
        case "shop_resource":
            return [_shop_event(item, where, kind, source_id, now)]
        case _:
            assert_never(body)


def _validated(model: Any, item: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(item)
    except ValidationError as error:
        path, reason = first_problem(error, default="body")
        raise SampleError(f"{where}.{path}", reason) from None


def _envelope_events(
    item: dict[str, Any],
    where: str,
    kind: SourceKind,
    source_id: str,
    mapping: Mapping,
    now: datetime,
) -> list[RawEvent]:
    """As ingest's ``parse_erp`` splits an envelope: one event per row, same ids."""
    envelope: ErpEnvelope = _validated(ErpEnvelope, item, where)
    delivery_id = delivery_id_for(source_id, envelope.id)
    key_fields = mapping.record_key_fields().get(envelope.table)
    return [
        RawEvent(
            event_id=f"{delivery_id}/{index}",
            delivery_id=delivery_id,
            index=index,
            count=len(envelope.rows),
            source_id=source_id,
            source_kind=kind,
            source_event_id=envelope.id,
            topic=envelope.table,
            operation=envelope.operation,
            record_key=erp_record_key(envelope.table, row, key_fields),
            occurred_at=envelope.occurred_at,
            received_at=now,
            payload=row,
        )
        for index, row in enumerate(envelope.rows)
    ]


def _shop_event(
    item: dict[str, Any], where: str, kind: SourceKind, source_id: str, now: datetime
) -> RawEvent:
    topic, body = item.get("topic"), item.get("body")
    if not isinstance(topic, str) or not topic.strip():
        raise SampleError(
            f"{where}.topic", "a shop sample is {topic: <webhook topic>, body: <resource>}"
        )
    if not isinstance(body, dict) or body.get("id") in (None, ""):
        raise SampleError(f"{where}.body", "the shop's resource, with its id")
    # Ingest's rule (deliveries.parse_shop), which the transform may not import.
    delete = verb_of(kind, topic.strip()) in ("delete", "deleted", "redact")
    return RawEvent(
        event_id=f"sample_{where}/0",
        delivery_id=f"sample_{where}",
        index=0,
        count=1,
        source_id=source_id,
        source_kind=kind,
        source_event_id=None,
        topic=topic.strip(),
        operation=Operation.DELETE if delete else Operation.UPSERT,
        record_key=str(body["id"]),
        occurred_at=None,
        received_at=now,
        payload=body,
    )


# -- the check (pure) ----------------------------------------------------------------------


def check(
    events: list[RawEvent], mapping: Mapping, *, source_id: str, kind: str, origin: str
) -> DryRunReport:
    """Run the mapping over the events as the transform would, writing nothing."""
    report = DryRunReport(source_id, kind, origin, len(events))
    unmapped: Counter[tuple[str, str]] = Counter()
    for event in events:
        decoded = _decode(event, mapping)
        unmapped.update(decoded.unmapped)
        if decoded.rejection is not None:
            rejection = decoded.rejection
            report.refused.append(
                RefusedRecord(
                    event.event_id,
                    event.topic,
                    event.record_key,
                    rejection.code,
                    rejection.field,
                    rejection.reason,
                )
            )
            continue
        for record in decoded.records:
            report.written += [_written(record, row) for row in record.rows]
        report.skipped += [
            SkippedSample(event.event_id, s.table, s.rule, s.reason, s.path)
            for s in decoded.skipped
        ]
    report.unmapped = [
        UnmappedSample(table, name, count) for (table, name), count in sorted(unmapped.items())
    ]
    _resolve_within_samples(report)
    report.ok = not report.refused
    return report


def _decode(event: RawEvent, mapping: Mapping) -> Decoded:
    """``decode_event``, isolated as ``Decoder.decode`` isolates it: a payload shape
    nobody foresaw is a refusal here too, not a crash of the check."""
    try:
        return decode_event(event, mapping)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"[:500]
        return Decoded(event, rejection=RecordRejected("invalid_payload", reason))


def _written(record: NormalizedRecord, row: NormalizedRow) -> WrittenRow:
    return WrittenRow(
        event_id=record.event_id,
        table=row.source_table,
        entity=row.entity,
        key=row.source_key,
        operation=record.operation.value,
        columns={column: _json_value(value) for column, value in sorted(row.values.items())},
        types={column: type(value).__name__ for column, value in sorted(row.values.items())},
        extra=row.extra,
        references=[
            ReferenceCheck(
                r.column,
                r.field,
                r.target_entity,
                r.target_key,
                r.on_missing,
                target_source=r.target_source,
                by=r.by,
            )
            for r in row.references
        ],
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _resolve_within_samples(report: DryRunReport) -> None:
    """A reference to a row the samples themselves write would resolve (the transform
    applies parents first and un-parks within the batch): that needs no database."""
    written = {(row.entity, row.key) for row in report.written}
    for row in report.written:
        for reference in row.references:
            same_source = reference.target_source in (None, report.source_id)
            by_key = reference.by is None
            if (
                same_source
                and by_key
                and (reference.target_entity, reference.target_key) in written
            ):
                reference.outcome = "in sample"


def _missing_outcome(reference: ReferenceCheck) -> str:
    return "would create a placeholder" if reference.on_missing == "stub" else "would park"


# -- references against the database (read-only) -------------------------------------------


async def check_references(connection: Any, report: DryRunReport) -> None:
    """Look the references' targets up, read-only, one query per target entity; the
    report then says which would be found, and which would park or create a placeholder."""
    # (entity, source, column matched: None for the key) -> the values looked for
    pending: dict[tuple[str, str, str | None], set[str]] = {}
    for row in report.written:
        for reference in row.references:
            if reference.outcome == NOT_CHECKED:
                group = (reference.target_entity, _source_of(reference, report), reference.by)
                pending.setdefault(group, set()).add(reference.target_key)
    matches: dict[tuple[str, str, str | None, str], int] = {}
    for (entity, source, by), values in pending.items():
        for value, count in await _matches(connection, entity, source, by, values):
            matches[(entity, source, by, value)] = count
    for row in report.written:
        for reference in row.references:
            if reference.outcome == NOT_CHECKED:
                group = (reference.target_entity, _source_of(reference, report), reference.by)
                reference.outcome = _outcome(
                    reference, matches.get((*group, reference.target_key), 0)
                )
    report.references_checked = True


def _source_of(reference: ReferenceCheck, report: DryRunReport) -> str:
    return reference.target_source or report.source_id


async def _matches(
    connection: Any, entity: str, source: str, by: str | None, values: set[str]
) -> list[tuple[str, int]]:
    """How many live rows of ``entity`` in ``source`` have each value (by key, or by the
    column ``by``), as ``references`` resolves them."""
    table = table_of(entity)
    column = "source_key" if by is None else by
    assert column in table.c, f"{column} is not a column of {entity}"  # checked at load
    # By key a stored row is the target even if deleted (as ``references._look_up``);
    # by another field only live rows count (``references._look_up_by``).
    live = "" if by is None else "deleted_at IS NULL AND "
    rows = await connection.fetch(
        f"SELECT {column}::text AS value, count(*) AS n FROM {table.name} "  # noqa: S608
        f"WHERE source_id = $1 AND {live}{column}::text = ANY($2::text[]) GROUP BY 1",
        source,
        sorted(values),
    )
    return [(row["value"], int(row["n"])) for row in rows]


def _outcome(reference: ReferenceCheck, count: int) -> str:
    if count == 1 or (count and reference.by is None):
        return "found"
    if count > 1:
        return f"would park: {count} rows have it, Ponte does not guess between them"
    return _missing_outcome(reference)


# -- as text ---------------------------------------------------------------------------------


def render(report: DryRunReport) -> str:
    """The report for a person, grouped per source table."""
    lines = [
        f"source {report.source_id} ({report.kind}), mapping: {report.mapping}",
        f"{report.events} record event(s): {len(report.written)} row(s) would be written, "
        f"{len(report.refused)} record(s) refused, {len(report.skipped)} row(s) skipped",
    ]
    # In the order the samples meet them (a parent's table before its children's).
    tables = list(
        dict.fromkeys(
            [row.table for row in report.written]
            + [r.table for r in report.refused]
            + [s.table for s in report.skipped]
            + [u.table for u in report.unmapped]
        )
    )
    for table in tables:
        lines.append("")
        lines.append(f"table {table}")
        lines += _table_lines(report, table)
    lines.append("")
    lines.append("OK: everything maps" if report.ok else "REFUSED: fix the fields named above")
    return "\n".join(lines)


def _table_lines(report: DryRunReport, table: str) -> list[str]:
    lines = []
    for row in (r for r in report.written if r.table == table):
        verb = "delete" if row.operation == "delete" else "write"
        lines.append(f"  {verb} {row.entity} {row.key!r}")
        empty = [column for column, value in row.columns.items() if value is None]
        for column, value in row.columns.items():
            if value is None:
                continue
            kind = row.types[column]
            shown = json.dumps(value, ensure_ascii=False) if kind == "str" else str(value)
            lines.append(f"    {column} = {shown} ({kind})")
        if empty:
            lines.append(f"    empty (NULL): {', '.join(empty)}")
        for reference in row.references:
            lines.append(
                f"    {reference.column} -> {reference.target()} "
                f"(from {reference.field}): {reference.outcome}"
            )
    for refused in (r for r in report.refused if r.table == table):
        lines.append(
            f"  REFUSED record {refused.record_key!r} at {refused.field or table}: "
            f"{refused.code}: {refused.reason}"
        )
    for skipped in (s for s in report.skipped if s.table == table):
        because = f" ({skipped.reason})" if skipped.reason else ""
        lines.append(f"  skip {skipped.path}: {skipped.rule}{because}")
    for unmapped in (u for u in report.unmapped if u.table == table):
        what = (
            "the whole table is not in the mapping"
            if unmapped.field == "*"
            else (f"field {unmapped.field} is not mapped: it would land in extra")
        )
        lines.append(f"  unmapped: {what} ({unmapped.occurrences}x)")
    return lines
