"""The transform end to end against the real broker and PostgreSQL: raw topic in, rows,
change events and dead letters out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ponte.shared.events import RawEvent
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind
from ponte.transform.consumer import TransformConsumer
from ponte.transform.outbox import OutboxRelay
from ponte.transform.processor import BatchProcessor
from tests.conftest import read_topic
from tests.eventually import eventually
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"transform_batch_size": 50})


async def produce(producer: AIOKafkaProducer, topic: str, events: list[RawEvent | bytes]) -> None:
    for event in events:
        if isinstance(event, bytes):
            await producer.send_and_wait(topic, value=event, key=b"poison")
        else:
            await producer.send_and_wait(
                topic, value=event.model_dump_json().encode(), key=event.partition_key
            )


async def run_until(
    consumer: TransformConsumer, done: Callable[[], Awaitable[bool]], timeout_s: float = 20
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        what = getattr(done, "__qualname__", repr(done))  # the test's own function names it
        await eventually(done, timeout_s=timeout_s, task=task, message=f"transform: {what}")
    finally:
        stop.set()
        await task


async def test_raw_events_become_rows_changes_and_dead_letters(
    settings: Settings, producer: AIOKafkaProducer, pool: asyncpg.Pool, source_id: str
) -> None:
    events: list[RawEvent | bytes] = [
        raw_event(
            "Pedido",
            {"codigo": "PED-1", "empresa": "E1", "total": "1.234,56", "cor_favorita": "azul"},
            source_id=source_id,
        ),
        b"not json at all",  # poison: must not block what follows
        raw_event(
            "Empresa",
            {"codigo": "E1", "cnpj": "11.222.333/0001-82"},  # bad check digit
            source_id=source_id,
        ),
        raw_event("Empresa", {"codigo": "E2", "cnpj": "11222333000181"}, source_id=source_id),
        raw_event("Estoque", {"codigo": "X"}, source_id=source_id),  # unknown table
    ]
    await produce(producer, settings.raw_topic, events)
    processor = BatchProcessor(pool, settings)
    consumer = TransformConsumer(settings, processor, OutboxRelay(pool, producer))

    async def done() -> bool:
        return (
            await pool.fetchval("SELECT count(*) FROM companies WHERE source_id = $1", source_id)
            == 1
        )

    await run_until(consumer, done)

    order = await pool.fetchrow("SELECT * FROM orders WHERE source_id = $1", source_id)
    assert order["total"] == Decimal("1234.56") and order["extra"] == {"cor_favorita": "azul"}
    rejections = await pool.fetch(
        "SELECT * FROM transform_rejections WHERE source_id = $1 ORDER BY source_table", source_id
    )
    assert [(r["source_table"], r["field"]) for r in rejections] == [
        ("Empresa", "Empresa.cnpj"),
        ("Estoque", None),
    ]
    assert "CNPJ" in rejections[0]["reason"]
    unmapped = await pool.fetch(
        "SELECT source_table, field FROM unmapped_fields WHERE source_id = $1 ORDER BY 1", source_id
    )
    assert [(u["source_table"], u["field"]) for u in unmapped] == [
        ("Estoque", "*"),
        ("Pedido", "cor_favorita"),
    ]

    dead = await read_topic(
        settings.kafka_bootstrap, settings.transform_dead_letter_topic, expect=3
    )
    reasons = sorted(dict(m.headers)["ponte-dlq-code"].decode() for m in dead)
    assert reasons == ["invalid_value", "undecodable", "unknown_table"]
    cnpj = next(m for m in dead if dict(m.headers)["ponte-dlq-code"] == b"invalid_value")
    headers = dict(cnpj.headers)
    assert headers["ponte-dlq-field"] == b"Empresa.cnpj"
    assert headers["ponte-original-topic"] == settings.raw_topic.encode()
    assert json.loads(cnpj.value)["event"]["payload"]["codigo"] == "E1"

    changes = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=2)
    mine = [json.loads(m.value) for m in changes]
    assert {(c["entity"], c["source_key"]) for c in mine} >= {("order", "PED-1"), ("company", "E2")}
    order_change = next(c for c in mine if c["entity"] == "order")
    assert "total" in order_change["changed"] and order_change["row"]["total"] == "1234.56"
    # The version's sequence is the raw message's offset (no sequence field mapped), and
    # the change event carries it for deliver.
    raw = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=len(events))
    offset = next(m.offset for m in raw if b'"PED-1"' in (m.value or b""))
    assert order["version_seq"] == offset
    assert order_change["version"]["seq"] == offset
    assert (
        next(m for m in changes if json.loads(m.value)["entity"] == "order").key
        == f"order/{source_id}/PED-1".encode()
    )
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0  # all published
    # Offsets were committed for every message, poison included.
    checker = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.transform_group_id,
        enable_auto_commit=False,
    )
    await checker.start()
    try:
        committed = 0
        for partition in range(settings.raw_topic_partitions):
            offset = await checker.committed(TopicPartition(settings.raw_topic, partition))
            committed += offset or 0
    finally:
        await checker.stop()
    assert committed == len(events)


@pytest.mark.parametrize(
    "body",
    [
        {"id": 5, "billing": "x"},
        {"id": 5, "line_items": 3},
    ],
)
async def test_malformed_shop_payload_is_dead_lettered_not_raised(
    pool: asyncpg.Pool, base_settings: Settings, body: dict[str, Any]
) -> None:
    event = raw_event("order.updated", body, source_id="shop-x", kind=SourceKind.WOOCOMMERCE)
    summary = await BatchProcessor(pool, base_settings).process([_Message(event)])
    assert summary.rejected == 1 and summary.rejected_codes == ["invalid_payload"]


async def test_a_value_the_database_refuses_is_isolated_by_splitting(
    pool: asyncpg.Pool, base_settings: Settings, source_id: str
) -> None:
    good = [
        raw_event("Pedido", {"codigo": f"P{n}", "total": "1,00"}, source_id=source_id)
        for n in range(7)
    ]
    # Parses as a decimal, but overflows NUMERIC(18, 4): only PostgreSQL can tell.
    bad = raw_event("Pedido", {"codigo": "BIG", "total": "1" + "0" * 20}, source_id=source_id)
    summary = await BatchProcessor(pool, base_settings).process(
        [_Message(e) for e in [*good[:3], bad, *good[3:]]]
    )
    assert summary.splits >= 1 and summary.rejected_codes == ["database_error"]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE source_id = $1", source_id) == 7
    rejection = await pool.fetchrow(
        "SELECT * FROM transform_rejections WHERE source_id = $1", source_id
    )
    assert rejection["record_key"] == "BIG" and "numeric" in rejection["reason"]


class _Message:
    def __init__(self, event: RawEvent) -> None:
        self.topic, self.partition, self.offset = "raw", 0, 0
        self.key, self.value = event.partition_key, event.model_dump_json().encode()
        self.headers: list[tuple[str, bytes]] = []
