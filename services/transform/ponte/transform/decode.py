"""From a raw-topic message to normalised records, or to the reason it cannot be stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

from pydantic import ValidationError

from ponte.shared import strict_json
from ponte.shared.events import RawEvent
from ponte.shared.mapping import Mapping, mapping_for
from ponte.shared.source_kinds import SourceKind, spec_of
from ponte.shared.validation_errors import first_problem
from ponte.transform.normalize import (
    NormalizedRecord,
    RecordRejected,
    RecordSkipped,
    SkippedRow,
    normalize_record,
)
from ponte.transform.shops import shop_records


@dataclass
class Decoded:
    """What one message became: records to apply, or a rejection; plus what the mapping
    did not know and the rows its skip rules left out (reported either way)."""

    event: RawEvent | None
    records: list[NormalizedRecord] = field(default_factory=list)
    rejection: RecordRejected | None = None
    unmapped: set[tuple[str, str]] = field(default_factory=set)
    skipped: list[SkippedRow] = field(default_factory=list)


class Decoder:
    """Caches each source's mapping (files are read once per process)."""

    def __init__(self, overrides_dir: Path | None = None) -> None:
        self._overrides_dir = overrides_dir
        self._mappings: dict[tuple[SourceKind, str], Mapping] = {}

    def mapping(self, kind: SourceKind, source_id: str) -> Mapping:
        key = (kind, source_id)
        if key not in self._mappings:
            self._mappings[key] = mapping_for(kind, source_id, self._overrides_dir)
        return self._mappings[key]

    def decode(self, value: bytes | None, offset: int | None = None) -> Decoded:
        """Never raises: whatever a payload does to the code below becomes a rejection
        (dead letter), so one message cannot stop the consumer or block its partition.
        ``offset`` is the message's raw topic offset: its records' version sequence,
        unless the mapping names the source's own (``normalize.Version``)."""
        try:
            return self._decode(value, offset)
        except Exception as error:  # a payload shape nobody foresaw: isolate it
            return Decoded(
                None,
                rejection=RecordRejected(
                    "invalid_payload", f"{type(error).__name__}: {error}"[:500]
                ),
            )

    def _decode(self, value: bytes | None, offset: int | None) -> Decoded:
        # The edge's decoder and limits (ingest refused anything beyond them with a 4xx),
        # so a message from anywhere else is refused for the same reasons, by name, and
        # nothing is silently altered (NUL used to be stripped here, merging "X\0Y" and
        # "XY").
        try:
            document = strict_json.loads(value or b"", max_depth=strict_json.RAW_EVENT_DEPTH)
        except strict_json.JsonRefused as refused:
            return Decoded(
                None,
                rejection=RecordRejected(
                    "undecodable", f"not a Ponte raw event: {refused.message}", refused.path
                ),
            )
        try:
            event = RawEvent.model_validate(document)
        except ValidationError as error:
            path, reason = first_problem(error, default="value")
            return Decoded(
                None,
                rejection=RecordRejected(
                    "undecodable", f"not a Ponte raw event: {path}: {reason}", path
                ),
            )
        return decode_event(event, self.mapping(event.source_kind, event.source_id), offset)


def decode_event(event: RawEvent, mapping: Mapping, offset: int | None = None) -> Decoded:
    """One readable raw event under a mapping: what the transform does after decoding
    the bytes, and what ``ponte.transform.dry_run`` runs, so a dry run cannot drift from
    the real thing. ``offset``: the raw topic offset, the records' version sequence
    unless the mapping names the source's own. Raises only what the caller's
    ``Decoder.decode`` isolates. Every record carries the mapping's digest."""
    decoded = _decode_event(event, mapping, offset)
    for record in decoded.records:
        record.mapping_digest = mapping.digest
    return decoded


def _decode_event(event: RawEvent, mapping: Mapping, offset: int | None) -> Decoded:
    try:
        body = spec_of(event.source_kind).body
        match body:
            case "envelope":
                try:
                    record = normalize_record(event, mapping, offset=offset)
                except RecordSkipped as skip:
                    return Decoded(event, unmapped=skip.unmapped, skipped=[skip.skipped])
                return Decoded(event, [record], unmapped=record.unmapped, skipped=record.skipped)
            case "shop_resource":
                return _decode_shop(event, mapping, offset)
            case _:
                assert_never(body)
    except RecordRejected as rejection:
        return Decoded(event, rejection=rejection, unmapped=rejection.unmapped)


def _decode_shop(event: RawEvent, mapping: Mapping, offset: int | None) -> Decoded:
    decoded = Decoded(event)
    for shop_record in shop_records(event):
        scoped: Any = event.model_copy(update={"operation": shop_record.operation})
        try:
            record = normalize_record(
                scoped,
                mapping,
                table=shop_record.table,
                payload=shop_record.row,
                version_at=shop_record.version_at,
                offset=offset,
            )
        except RecordSkipped as skip:  # this record only; the event's others go on
            decoded.skipped.append(skip.skipped)
            decoded.unmapped |= skip.unmapped
            continue
        decoded.records.append(record)
        decoded.unmapped |= record.unmapped
        decoded.skipped += record.skipped
    if not decoded.records and not decoded.skipped:
        decoded.unmapped.add((event.topic, "*"))
    return decoded
