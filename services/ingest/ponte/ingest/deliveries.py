"""Turning an authenticated request body into record events for the raw topic.

A *delivery* is one webhook request. ``parse_delivery`` decodes it (honouring a declared
charset such as Latin-1 from older ERPs), validates it for its source's kind, and splits it
into one ``RawEvent`` per record. Nothing is normalised here: the transform owns meaning;
ingest only guarantees the event is well-formed, attributable and durable.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, assert_never

from pydantic import ValidationError

from ponte.shared import strict_json
from ponte.shared.events import ErpEnvelope, Operation, RawEvent, delivery_id_for, erp_record_key
from ponte.shared.rejections import Rejection
from ponte.shared.source_kinds import SourceKind, spec_of, verb_of
from ponte.shared.validation_errors import first_problem


@dataclass(frozen=True)
class Delivery:
    """A parsed webhook request: who sent it, its dedup key, and its record events."""

    dedup_key: str
    delivery_id: str
    source_event_id: str | None
    tables: list[str]
    events: list[RawEvent]


def charset_of(content_type: str | None) -> str:
    """The declared charset, validated; JSON's default is UTF-8."""
    if content_type:
        for parameter in content_type.split(";")[1:]:
            name, _, value = parameter.strip().partition("=")
            if name.strip().lower() == "charset" and value:
                charset = value.strip().strip('"').lower()
                try:
                    return codecs.lookup(charset).name
                except LookupError:
                    raise Rejection(
                        415,
                        "unknown_charset",
                        f"Content-Type charset {charset!r} is unknown",
                        field="content-type",
                    ) from None
    return "utf-8"


CharsetPolicy = Literal["warn", "strict"]
"""A source's ``charset`` setting (``SourceConfig.charset``)."""


@functools.cache
def single_byte(charset: str) -> bool:
    """Whether every byte is one character in ``charset`` (Latin-1, cp1252, the other
    ISO-8859 and Windows code pages): the charsets in which a UTF-8 body decodes without
    an error, as mojibake ("é" read as "Ã©")."""
    return len(bytes(range(256)).decode(charset, "replace")) == 256


def charset_mismatch(body: bytes, charset: str) -> str | None:
    """Why ``body`` is probably not in ``charset``, or None: a declared single-byte
    charset on a body that is valid UTF-8 with at least one multi-byte sequence. (ASCII
    is the same in all of them, and random Latin-1 text with accents is rarely valid
    UTF-8, so this is a reliable sign of a mis-declared sender.)"""
    if charset == "utf-8" or body.isascii() or not single_byte(charset):
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    sample = next(char for char in text if ord(char) > 127)
    return (
        f"body declared {charset} is valid UTF-8 with multi-byte sequences: decoded as "
        f"{charset}, {sample!r} reads {sample.encode().decode(charset, 'replace')!r}; "
        "is the sender's charset right?"
    )


def decode_json(
    body: bytes,
    content_type: str | None,
    charset_policy: CharsetPolicy = "warn",
    warnings: list[str] | None = None,
) -> Any:
    """Decode and parse the body with the edge's strict decoder (``strict_json``): what
    it refuses (syntax, depth, number size, non-finite numbers, lone surrogates, NUL,
    duplicate keys) is a 400/422 naming the problem and its JSON path or position.

    A declared single-byte charset on a body that is really UTF-8 (``charset_mismatch``)
    is refused with 415 under ``charset_policy="strict"``; otherwise the body is decoded
    as declared and the warning appended to ``warnings`` (the request's history row)."""
    charset = charset_of(content_type)
    document: bytes | str = body
    if charset != "utf-8":
        mismatch = charset_mismatch(body, charset)
        if mismatch is not None:
            if charset_policy == "strict":
                raise Rejection(
                    415,
                    "charset_mismatch",
                    mismatch + " (this source refuses it: send charset=utf-8)",
                    field="content-type",
                )
            if warnings is not None:
                warnings.append(mismatch)
        try:
            document = body.decode(charset)
        except UnicodeDecodeError as error:
            raise _bad_encoding(charset, error.start) from None
    try:
        return strict_json.loads(document)
    except strict_json.JsonRefused as refused:
        if refused.code == "bad_encoding":
            raise _bad_encoding(charset, refused.offset or 0) from None
        field = "body" if refused.path == "$" else refused.path
        message = (
            "body is " + refused.message if refused.code == "invalid_json" else refused.message
        )
        raise Rejection(refused.status, refused.code, message, field=field) from None


def _bad_encoding(charset: str, start: int) -> Rejection:
    return Rejection(
        400,
        "bad_encoding",
        f"body is not valid {charset} at byte {start}; declare the charset in "
        "Content-Type (e.g. application/json; charset=ISO-8859-1)",
        field="body",
    )


def _invalid(error: ValidationError, prefix: str = "") -> Rejection:
    path, reason = first_problem(error, default="body")
    field = prefix + path
    return Rejection(422, "invalid_envelope", f"field {field}: {reason}", field=field)


def parse_erp(
    source_id: str,
    body: Any,
    received_at: datetime,
    key_fields: Mapping[str, list[str]] | None = None,
) -> Delivery:
    """Ponte's ERP envelope: one table, many rows, each row one record event."""
    if not isinstance(body, dict):
        raise Rejection(422, "invalid_envelope", "body must be a JSON object", field="body")
    try:
        envelope = ErpEnvelope.model_validate(body)
    except ValidationError as error:
        raise _invalid(error) from None
    for index, row in enumerate(envelope.rows):
        if not row:
            raise Rejection(
                422, "invalid_envelope", f"field rows.{index}: row is empty", field=f"rows.{index}"
            )
    delivery_id = delivery_id_for(source_id, envelope.id)
    count = len(envelope.rows)
    fields = (key_fields or {}).get(envelope.table)
    events = [
        RawEvent(
            event_id=f"{delivery_id}/{index}",
            delivery_id=delivery_id,
            index=index,
            count=count,
            source_id=source_id,
            source_kind=SourceKind.ERP,
            source_event_id=envelope.id,
            topic=envelope.table,
            operation=envelope.operation,
            record_key=erp_record_key(envelope.table, row, fields),
            occurred_at=envelope.occurred_at,
            received_at=received_at,
            payload=row,
        )
        for index, row in enumerate(envelope.rows)
    ]
    return Delivery(envelope.id, delivery_id, envelope.id, [envelope.table], events)


# Shops: a topic header names what happened; the body is the whole resource.
_DELETE_VERBS = ("delete", "deleted", "redact")


def _shop_occurred_at(body: Mapping[str, Any]) -> datetime | None:
    """The resource's own version: Shopify's ``updated_at`` (ISO with offset) or
    WooCommerce's ``date_modified_gmt`` (naive UTC)."""
    for name in ("updated_at", "date_modified_gmt", "date_modified"):
        value = body.get(name)
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def parse_shop(
    kind: SourceKind,
    source_id: str,
    headers: Mapping[str, str],
    raw: bytes,
    body: Any,
    received_at: datetime,
) -> Delivery:
    """A Shopify or WooCommerce webhook: one resource, one record event."""
    spec = spec_of(kind)
    topic_header, id_headers = spec.topic_header, spec.delivery_id_headers
    assert topic_header is not None, f"{kind} is not a shop kind"
    topic = (headers.get(topic_header) or "").strip()
    if not topic:
        raise Rejection(
            400, "missing_topic", f"header {topic_header} is missing", field=topic_header
        )
    if not isinstance(body, dict):
        raise Rejection(422, "invalid_payload", "body must be a JSON object", field="body")
    record_id = body.get("id")
    if record_id in (None, "") or isinstance(record_id, dict | list | bool):
        raise Rejection(
            422, "invalid_payload", "field id: the resource's id is missing", field="id"
        )
    delivery_header_id = next((headers[h] for h in id_headers if headers.get(h)), None)
    # Without a delivery id, identical bodies count as the same delivery.
    dedup_key = delivery_header_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    delivery_id = delivery_id_for(source_id, dedup_key)
    verb = verb_of(kind, topic)
    operation = Operation.DELETE if verb in _DELETE_VERBS else Operation.UPSERT
    event = RawEvent(
        event_id=f"{delivery_id}/0",
        delivery_id=delivery_id,
        index=0,
        count=1,
        source_id=source_id,
        source_kind=kind,
        source_event_id=delivery_header_id,
        topic=topic,
        operation=operation,
        record_key=str(record_id),
        occurred_at=_shop_occurred_at(body),
        received_at=received_at,
        payload=body,
    )
    return Delivery(dedup_key, delivery_id, delivery_header_id, [topic], [event])


def is_woocommerce_ping(headers: Mapping[str, str], body: bytes) -> bool:
    """WooCommerce checks a new webhook's URL by POSTing ``webhook_id=<n>`` (form-encoded,
    unsigned, no topic header); it only activates the webhook if the answer is 2xx."""
    return (
        not headers.get("x-wc-webhook-topic")
        and body.startswith(b"webhook_id=")
        and body[len(b"webhook_id=") :].strip().isdigit()
    )


def parse_delivery(
    kind: SourceKind,
    source_id: str,
    headers: Mapping[str, str],
    raw: bytes,
    received_at: datetime,
    key_fields: Mapping[str, list[str]] | None = None,
    charset_policy: CharsetPolicy = "warn",
    warnings: list[str] | None = None,
) -> Delivery:
    """``warnings`` collects what was accepted but looked wrong; it is the caller's list,
    so a warning reaches the history even when the body is refused later on."""
    body = decode_json(raw, headers.get("content-type"), charset_policy, warnings)
    shape = spec_of(kind).body
    match shape:
        case "envelope":
            return parse_erp(source_id, body, received_at, key_fields)
        case "shop_resource":
            return parse_shop(kind, source_id, headers, raw, body, received_at)
        case _:
            assert_never(shape)
