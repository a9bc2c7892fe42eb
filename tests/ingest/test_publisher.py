"""What the publisher writes: the event's bytes, and the partition Java would pick."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from ponte.ingest.publisher import EventPublisher, encode_event
from ponte.shared.events import ERP_TIMEZONE, Operation, RawEvent
from ponte.shared.kafka import ensure_topics
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind
from tests.conftest import read_topic


def raw_event(index: int = 0, **changes: Any) -> RawEvent:
    fields: dict[str, Any] = {
        "event_id": f"evt_test/{index}",
        "delivery_id": "evt_test",
        "index": index,
        "count": 1,
        "source_id": "erp-1",
        "source_kind": SourceKind.ERP,
        "source_event_id": "src-1",
        "topic": "Pedido",
        "operation": Operation.UPSERT,
        "record_key": f"PED-{index}",
        "occurred_at": datetime(2024, 11, 14, 12, 1, 32, tzinfo=ERP_TIMEZONE),
        "received_at": datetime(2026, 11, 24, 13, 0, 0, 123456, tzinfo=UTC),
        "payload": {"codigo": f"PED-{index}"},
    }
    return RawEvent(**(fields | changes))


AWKWARD_EVENTS = [
    raw_event(),
    raw_event(occurred_at=None, source_event_id=None),
    raw_event(
        source_kind=SourceKind.SHOPIFY,
        topic="orders/delete",
        operation=Operation.DELETE,
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone(timedelta(hours=5.5))),
    ),
    raw_event(
        payload={
            "floats": [0.1 + 0.2, 1e16, 1e22, 1.23e-18, 5e-324, -0.0, 1.7976931348623157e308],
            "nan": float("nan"),
            "inf": float("inf"),
            "ints": [0, -(2**63), 2**64 - 1],
            "text": 'ção \u2028 \x00 "quoted" \\ €😀',
            "nested": [{"a": None, "b": True}, []],
        }
    ),
    raw_event(payload={"wider_than_64_bits": 2**70}),  # orjson refuses: pydantic writes it
]


@pytest.mark.parametrize("event", AWKWARD_EVENTS)
def test_encoding_is_pydantics_byte_for_byte(event: RawEvent) -> None:
    assert encode_event(event) == event.model_dump_json().encode()


@pytest.mark.integration
async def test_each_event_lands_in_javas_partition_with_pydantics_bytes(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    publisher = EventPublisher(settings)
    await publisher.start()
    try:
        await asyncio.wait_for(publisher.started.wait(), 20)
        events = [raw_event(index) for index in range(30)]
        await publisher.publish(events[:1], None)  # before and after the producer has metadata
        await publisher.publish(events[1:], "application/json; charset=utf-8")
    finally:
        await publisher.stop()

    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=30)
    partitions = list(range(settings.raw_topic_partitions))
    by_key = {event.partition_key: event for event in events}
    assert len(messages) == 30 and len({m.partition for m in messages}) > 1
    for message in messages:
        assert message.key is not None and message.value is not None
        event = by_key[message.key]
        assert message.partition == DefaultPartitioner()(message.key, partitions, partitions)
        assert message.value == event.model_dump_json().encode()


@pytest.mark.integration
async def test_partition_lists_are_forgotten_on_every_metadata_update(
    settings: Settings,
) -> None:
    """The sorted partition list is kept between publishes, and dropped when aiokafka
    refreshes its metadata, so a topic that grows is seen as aiokafka sees it."""
    await ensure_topics(settings)
    publisher = EventPublisher(settings)
    await publisher.start()
    try:
        await asyncio.wait_for(publisher.started.wait(), 20)
        await publisher.publish([raw_event(0)], None)
        await publisher.publish([raw_event(1)], None)
        expected = list(range(settings.raw_topic_partitions))
        assert publisher._partitions == {settings.raw_topic: expected}
        assert publisher._producer is not None
        assert await publisher._producer.client.force_metadata_update()
        assert publisher._partitions == {}
        await publisher.publish([raw_event(2)], None)
        assert publisher._partitions == {settings.raw_topic: expected}
    finally:
        await publisher.stop()
