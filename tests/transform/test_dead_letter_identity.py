"""Every transform rejection and dead letter keeps its identity: source, event id, table,
record key and the payload, or, for a value that cannot be read at all, the identity the
Kafka headers and key carry and the raw bytes (base64, cut, with a pointer). Against the
real broker (messages as ingest's publisher writes them) and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from ponte.ingest.publisher import encode_event, headers_for
from ponte.shared.events import RawEvent
from ponte.shared.settings import Settings
from ponte.transform.identity import RAW_KEEP_BYTES
from ponte.transform.processor import BatchProcessor
from tests.conftest import read_topic
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration


def _with_value(event: RawEvent, old: bytes, new: bytes) -> bytes:
    """The event as ingest encodes it, with one part of its payload replaced by bytes the
    strict decoder refuses (what an older ingest, or another producer, could write)."""
    value = encode_event(event)
    assert old in value
    return value.replace(old, new, 1)


async def _send_and_process(
    settings: Settings,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, str], dict[str, Any]]]]:
    """Produce (key, value, headers) to the raw topic, read them back as the transform's
    consumer does, process them; returns the rejection rows and the dead letters queued."""
    for key, value, headers in messages:
        await producer.send_and_wait(settings.raw_topic, value=value, key=key, headers=headers)
    records = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=len(messages))
    summary = await BatchProcessor(pool, settings).process(list(records))
    # Read from memory, then removed: left in the shared outbox, these would be "older
    # messages waiting" for every later relay test.
    await pool.execute(
        "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [entry[0] for entry in summary.outbox]
    )
    assert summary.rejected == len(messages)
    dead = [
        ({name: text.decode() for name, text in headers}, orjson.loads(value))
        for _, topic, _, value, headers in summary.outbox
        if topic == settings.transform_dead_letter_topic
    ]
    ids = [headers["ponte-event-id"] for headers, _ in dead]
    rows = await pool.fetch("SELECT * FROM transform_rejections WHERE event_id = ANY($1)", ids)
    return [dict(row) for row in rows], dead


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"n":1', b'"n":' + b"9" * 4400),
        (b'"n":1', b'"n":' + b"[" * 300 + b"]" * 300),
        (b'"n":1', b'"n":1e999'),
        (b'"n":1', b'"n":"\xff\xfe"'),
    ],
    ids=["huge-int", "too-deep", "non-finite", "not-utf8"],
)
async def test_an_unreadable_value_keeps_the_identity_its_headers_and_key_carry(
    settings: Settings,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    source_id: str,
    old: bytes,
    new: bytes,
) -> None:
    """Issue #20: a 4,300-digit number was dead-lettered as ``source_id=unknown``, event
    ``ponte.raw/1/489``, and without its payload."""
    event = raw_event("Pedido", {"codigo": "PED-77", "n": 1}, source_id=source_id)
    value = _with_value(event, old, new)
    rows, dead = await _send_and_process(
        settings, producer, pool, [(event.partition_key, value, headers_for(event, None))]
    )
    [row] = rows
    assert (row["event_id"], row["source_id"], row["source_table"], row["record_key"]) == (
        event.event_id,
        source_id,
        "Pedido",
        "PED-77",
    )
    assert base64.b64decode(row["raw"]["base64"]) == value
    assert row["raw"]["truncated"] is False and row["raw"]["bytes"] == len(value)
    [(headers, body)] = dead
    assert headers["ponte-source"] == source_id
    assert headers["ponte-record-key"] == "PED-77" and headers["ponte-table"] == "Pedido"
    assert body["identity"]["event_id"] == event.event_id
    assert base64.b64decode(body["raw"]["base64"]) == value
    assert body["raw"]["topic"] == settings.raw_topic


async def test_without_headers_the_key_and_the_leading_fields_identify_it(
    settings: Settings, producer: AIOKafkaProducer, pool: asyncpg.Pool, source_id: str
) -> None:
    """A producer that writes no headers: the raw event's own leading fields (ingest
    writes the payload last) and the key ``source/resource/record-key`` still tell."""
    event = raw_event("Itens pedido", {"codigo": "A/B-1", "n": 1}, source_id=source_id)
    value = _with_value(event, b'"n":1', b'"n":' + b"9" * 5000)
    [row], [(headers, _)] = await _send_and_process(
        settings, producer, pool, [(event.partition_key, value, [])]
    )
    assert (row["event_id"], row["source_id"], row["source_table"], row["record_key"]) == (
        event.event_id,
        source_id,
        "Itens pedido",
        "A/B-1",
    )
    assert headers["ponte-event-id"] == event.event_id


async def test_bytes_nothing_identifies_are_kept_cut_with_a_pointer(
    settings: Settings, producer: AIOKafkaProducer, pool: asyncpg.Pool
) -> None:
    """No header, no key, no field: the event id is where it stands, and its bytes are
    kept up to RAW_KEEP_BYTES with their size and digest (never decoded lossily)."""
    value = b"\xff\x00not json " + bytes(range(256)) * (RAW_KEEP_BYTES // 128)
    [row], [(headers, body)] = await _send_and_process(
        settings, producer, pool, [(None, value, [])]
    )
    assert row["source_id"] == "unknown"
    offset = row["raw"]["offset"]
    assert row["event_id"] == f"{settings.raw_topic}/{row['raw']['partition']}/{offset}"
    assert row["raw"]["truncated"] is True and row["raw"]["bytes"] == len(value)
    assert row["raw"]["sha256"] == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(body["raw"]["base64"]) == value[:RAW_KEEP_BYTES]
    assert headers["ponte-original-offset"] == str(offset)


async def test_a_readable_rejection_keeps_its_payload_and_identity(
    settings: Settings, producer: AIOKafkaProducer, pool: asyncpg.Pool, source_id: str
) -> None:
    """A record the mapping refuses (a bad CNPJ) is listed with its payload as sent."""
    event = raw_event(
        "Empresa", {"codigo": "E9", "cnpj": "11.222.333/0001-82"}, source_id=source_id
    )
    [row], [(headers, body)] = await _send_and_process(
        settings,
        producer,
        pool,
        [(event.partition_key, encode_event(event), headers_for(event, None))],
    )
    assert row["payload"] == {"codigo": "E9", "cnpj": "11.222.333/0001-82"}
    assert row["raw"] is None and row["record_key"] == "E9"
    assert body["event"]["payload"] == row["payload"] and body["raw"] is None
    assert headers["ponte-record-key"] == "E9"
    assert body["identity"]["source_id"] == source_id
