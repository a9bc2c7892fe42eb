"""``ponte reprocess`` against the real broker and PostgreSQL: a mapping fixed after events
were stored, re-applied to the raw topic through the live path (``BatchProcessor``)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from ponte.ingest.publisher import headers_for
from ponte.shared.crm_model import CrmModel, build_model, shipped_model_text
from ponte.shared.events import RawEvent
from ponte.shared.mapping import parse_mapping
from ponte.shared.settings import Settings
from ponte.shared.versions import Version, applies
from ponte.transform.consumer import TransformConsumer
from ponte.transform.decode import Decoder
from ponte.transform.outbox import OutboxRelay
from ponte.transform.processor import BatchProcessor
from ponte.transform.repository.applier import BatchApplier
from ponte.transform.reprocess import Progress, ReprocessReport, Selection, reprocess
from tests.conftest import read_topic, service_env
from tests.eventually import eventually
from tests.transform.conftest import BASE_TIME, raw_event

pytestmark = pytest.mark.integration

T0_MS = 1_700_000_000_000
"""The publish time of the first messages (set on each message, not the clock's)."""


def erp_mapping() -> dict[str, Any]:
    text = (resources.files("ponte.shared") / "mappings" / "erp.yaml").read_text("utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def before_the_fix() -> dict[str, Any]:
    """The shipped ERP mapping, with Empresa's ``nome_fantasia`` not mapped (so it lands
    in ``extra``): the mistake the fix corrects."""
    document = erp_mapping()
    del document["tables"]["Empresa"]["fields"]["nome_fantasia"]
    return document


def write_mapping(directory: Path, source_id: str, document: dict[str, Any]) -> None:
    (directory / f"{source_id}.yaml").write_text(
        yaml.safe_dump(document, allow_unicode=True), encoding="utf-8"
    )


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"mappings_dir": tmp_path, "transform_batch_size": 50})


async def produce(
    producer: AIOKafkaProducer, topic: str, events: list[RawEvent], timestamp_ms: int = T0_MS
) -> None:
    """As ingest publishes: its key and identity headers; a publish time of our choosing."""
    for event in events:
        await producer.send_and_wait(
            topic,
            value=event.model_dump_json().encode(),
            key=event.partition_key,
            headers=headers_for(event, None),
            timestamp_ms=timestamp_ms,
        )


async def run_live(
    settings: Settings,
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    done: Callable[[], Awaitable[bool]],
) -> None:
    """The live transform (its own group, a fresh decoder reading the mapping as it is
    now) until ``done``."""
    processor = BatchProcessor(pool, settings, Decoder(settings.mappings_dir))
    consumer = TransformConsumer(settings, processor, OutboxRelay(pool, producer))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(done, timeout_s=30, task=task, message="live transform")
    finally:
        stop.set()
        await task


async def company(pool: asyncpg.Pool, source_id: str, key: str) -> asyncpg.Record:
    rows = await pool.fetch(
        "SELECT * FROM companies WHERE source_id = $1 AND source_key = $2", source_id, key
    )
    assert len(rows) == 1, f"{len(rows)} rows for {key}"
    return rows[0]


async def count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await pool.fetchval(sql, *args))


def company_changes(messages: list[Any], source_id: str) -> list[dict[str, Any]]:
    found = [json.loads(m.value) for m in messages]
    return [c for c in found if c["source_id"] == source_id and c["entity"] == "company"]


@pytest.fixture
async def stored(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer, source_id: str
) -> AsyncIterator[list[RawEvent]]:
    """E1 (a trade name the old mapping leaves in extra), E2 stored then deleted, a contact,
    and another source's company, applied by the live transform under the old mapping."""
    write_mapping(settings.mappings_dir, source_id, before_the_fix())
    other = f"{source_id}-other"
    write_mapping(settings.mappings_dir, other, before_the_fix())
    events = [
        raw_event("Empresa", {"codigo": "E1", "nome_fantasia": "Acme Shop"}, source_id=source_id),
        raw_event("Empresa", {"codigo": "E2", "nome_fantasia": "Gone"}, source_id=source_id),
        raw_event("Empresa", {"codigo": "E2"}, source_id=source_id, minute=1, operation="delete"),
        raw_event("Contato", {"codigo": "C1", "nome": "Ana"}, source_id=source_id),
        raw_event("Empresa", {"codigo": "E9", "nome_fantasia": "Other"}, source_id=other),
    ]
    await produce(producer, settings.raw_topic, events)

    async def applied() -> bool:
        sql = (
            "SELECT count(*) FROM companies WHERE source_id = $1 "
            "AND (deleted_at IS NOT NULL OR source_key = 'E1')"
        )
        return await count(pool, sql, source_id) == 2

    await run_live(settings, pool, producer, applied)
    before = await company(pool, source_id, "E1")
    assert before["trade_name"] is None and before["extra"] == {"nome_fantasia": "Acme Shop"}
    yield events


async def test_a_mapping_fix_reprocessed_corrects_stored_rows_once(
    settings: Settings, pool: asyncpg.Pool, source_id: str, stored: list[RawEvent]
) -> None:
    changes_before = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=3)
    other_digest = (await company(pool, f"{source_id}-other", "E9"))["mapping_digest"]
    write_mapping(settings.mappings_dir, source_id, erp_mapping())  # the fix
    progress: list[Progress] = []

    report = await reprocess(
        settings, Selection(source_id), on_progress=progress.append, progress_every_s=0
    )

    fixed = await company(pool, source_id, "E1")
    assert fixed["trade_name"] == "Acme Shop" and fixed["extra"] == {}
    deleted = await company(pool, source_id, "E2")  # one row: no duplicate
    assert deleted["deleted_at"] is not None and deleted["trade_name"] is None
    assert report.selected == 4 and report.read == 5
    # E1 and C1 re-applied, E2's delete rewrote its tombstone; E2's upsert lost to it.
    assert (report.applied, report.unchanged, report.changes, report.rejected) == (3, 1, 1, 0)
    assert report.by_table == {"Empresa": 3, "Contato": 1}
    # Only E1's content changed: one change event, upsert, naming what changed.
    messages = await read_topic(
        settings.kafka_bootstrap, settings.changes_topic, expect=len(changes_before) + 1
    )
    assert len(messages) == len(changes_before) + 1
    seen = {(m.partition, m.offset) for m in changes_before}
    new = company_changes([m for m in messages if (m.partition, m.offset) not in seen], source_id)
    assert [(c["source_key"], c["operation"]) for c in new] == [("E1", "upsert")]
    assert new[0]["changed"] == ["extra", "trade_name"]
    assert new[0]["row"]["trade_name"] == "Acme Shop"
    # Deliver skips a version a target already has: the correction must sort after the
    # change that first stored E1, or it would never reach the CRM.
    from ponte.deliver.changes import change_from

    [first] = [c for c in company_changes(changes_before, source_id) if c["source_key"] == "E1"]
    at = {"topic": settings.changes_topic, "partition": 0, "offset": 0, "published_at": None}
    assert change_from(new[0], **at).version_key() > change_from(first, **at).version_key()
    # The other source was read past, not written.
    assert (await company(pool, f"{source_id}-other", "E9"))["mapping_digest"] == other_digest
    assert progress[-1].done == progress[-1].total == 5 and progress[-1].ratio == 1.0
    assert "5/5 messages (100%)" in progress[-1].line()

    again = await reprocess(settings, Selection(source_id))
    assert (again.applied, again.unchanged, again.changes) == (0, 4, 0)
    assert await count(pool, "SELECT count(*) FROM outbox") == 0


async def test_table_and_since_select_what_is_reprocessed(
    settings: Settings,
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    source_id: str,
    stored: list[RawEvent],
) -> None:
    later = raw_event(
        "Empresa", {"codigo": "E3", "nome_fantasia": "Late"}, source_id=source_id, minute=3
    )
    await produce(producer, settings.raw_topic, [later], timestamp_ms=T0_MS + 60_000)

    async def e3() -> bool:
        return await count(pool, "SELECT count(*) FROM companies WHERE source_id = $1 "
                           "AND source_key = 'E3'", source_id) == 1  # fmt: skip

    await run_live(settings, pool, producer, e3)
    write_mapping(settings.mappings_dir, source_id, erp_mapping())
    contact_digest = (
        await pool.fetchrow("SELECT mapping_digest FROM contacts WHERE source_id = $1", source_id)
    )["mapping_digest"]

    since = datetime.fromtimestamp((T0_MS + 30_000) / 1000, UTC)
    only_late = await reprocess(settings, Selection(source_id, since=since))
    assert only_late.selected == 1 and only_late.changes == 1 and only_late.beyond_topic is None
    assert (await company(pool, source_id, "E3"))["trade_name"] == "Late"
    assert (await company(pool, source_id, "E1"))["trade_name"] is None  # before --since

    companies = await reprocess(settings, Selection(source_id, table="empresa"))
    assert companies.selected == 4 and companies.by_table == {"Empresa": 4}
    assert (await company(pool, source_id, "E1"))["trade_name"] == "Acme Shop"
    # E3 was reprocessed already: unchanged.
    assert (companies.applied, companies.changes) == (2, 1)
    assert (
        await pool.fetchval("SELECT mapping_digest FROM contacts WHERE source_id = $1", source_id)
        == contact_digest
    )


async def test_a_dry_run_writes_nothing(
    settings: Settings, pool: asyncpg.Pool, source_id: str, stored: list[RawEvent]
) -> None:
    write_mapping(settings.mappings_dir, source_id, erp_mapping())
    # A request accepted before the topic's oldest event: out of reach, and said so.
    await pool.execute(
        "INSERT INTO webhook_requests (received_at, source_id, tables, outcome, status_code, "
        "response_body, latency_ms, size_bytes) VALUES ($1, $2, '{Empresa}', 'accepted', 202, "
        "'{}', 1, 10), ($3, $2, '{Empresa}', 'accepted', 202, '{}', 1, 10)",
        datetime(2023, 1, 1, tzinfo=UTC),
        source_id,
        datetime.fromtimestamp(T0_MS / 1000, UTC),  # when the topic's events were received
    )
    report = await reprocess(settings, Selection(source_id), dry_run=True)
    assert report.selected == 4 and report.applied == 4 and report.changes == 0
    assert "would re-apply 4 record(s)" in report.summary()
    assert report.beyond_topic == 1
    assert "NOT reprocessed: 1 accepted request(s)" in report.summary()
    contacts = await reprocess(settings, Selection(source_id, table="contato"), dry_run=True)
    assert contacts.beyond_topic == 0
    assert (await company(pool, source_id, "E1"))["trade_name"] is None


async def test_live_traffic_during_a_reprocess_keeps_one_row_and_the_newest_version(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer, source_id: str
) -> None:
    """The reprocess and a live transform apply the same not-yet-stored events at once
    (inserts of the same new rows race), and newer events arrive while it runs: one row
    per key, the newest content, one insert change event per key."""
    write_mapping(settings.mappings_dir, source_id, before_the_fix())
    keys = [f"K{i:03d}" for i in range(200)]
    first = [
        raw_event("Empresa", {"codigo": k, "nome_fantasia": f"v1 {k}"}, source_id=source_id)
        for k in keys
    ]
    await produce(producer, settings.raw_topic, first)
    write_mapping(settings.mappings_dir, source_id, erp_mapping())
    newer = [
        raw_event(
            "Empresa", {"codigo": k, "nome_fantasia": f"v2 {k}"}, source_id=source_id, minute=5
        )
        for k in keys[:50]
    ]
    processor = BatchProcessor(pool, settings, Decoder(settings.mappings_dir))
    live = TransformConsumer(settings, processor, OutboxRelay(pool, producer))
    stop = asyncio.Event()
    living = asyncio.create_task(live.run(stop))
    await eventually(lambda: live.running, timeout_s=30, task=living, message="live running")
    reprocessing = asyncio.create_task(reprocess(settings, Selection(source_id)))
    await produce(producer, settings.raw_topic, newer, timestamp_ms=T0_MS + 60_000)

    async def settled() -> bool:
        if not reprocessing.done():
            return False
        latest = await pool.fetch(
            "SELECT source_key, trade_name FROM companies WHERE source_id = $1", source_id
        )
        return len(latest) == len(keys) and all(
            r["trade_name"] == f"v{2 if r['source_key'] in keys[:50] else 1} {r['source_key']}"
            for r in latest
        )

    try:
        await eventually(settled, timeout_s=60, task=living, message="reprocess and live")
    finally:
        stop.set()
        await living
    report: ReprocessReport = reprocessing.result()
    assert report.rejected == 0
    assert (
        await count(pool, "SELECT count(*) FROM companies WHERE source_id = $1", source_id) == 200
    )
    assert await count(pool, "SELECT count(*) FROM transform_rejections WHERE source_id = $1",
                       source_id) == 0  # fmt: skip
    messages = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=250)
    mine = company_changes(messages, source_id)
    inserts = [c for c in mine if c["version"]["at"] == BASE_TIME.isoformat()]
    assert sorted(c["source_key"] for c in inserts) == keys  # each inserted once
    assert len(mine) == 250


def test_an_equal_version_applies_only_reprocessed_and_under_another_mapping() -> None:
    stored = Version(BASE_TIME, 7, "evt/0")
    older = Version(BASE_TIME, 6, "evt/0")
    assert not applies(stored, "new", stored, "old", reprocess=False)  # live: never equal
    assert applies(stored, "new", stored, "old", reprocess=True)
    assert applies(stored, "new", stored, None, reprocess=True)  # before migration 0016
    assert not applies(stored, "old", stored, "old", reprocess=True)
    assert not applies(older, "new", stored, "old", reprocess=True)  # a newer event won
    assert applies(Version(BASE_TIME, 8, "evt/0"), "old", stored, "new", reprocess=False)


async def test_a_new_row_inserted_by_live_traffic_meanwhile_is_updated_not_duplicated(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer, source_id: str
) -> None:
    """The race made certain: a live transaction inserts a row the reprocess inserts too,
    and commits while the reprocess waits on the unique key. The reprocess retries the
    batch (a race, not bad data), finds the row, and neither duplicates nor rejects it."""
    write_mapping(settings.mappings_dir, source_id, erp_mapping())
    event = raw_event("Empresa", {"codigo": "R1", "nome_fantasia": "Raced"}, source_id=source_id)
    await produce(producer, settings.raw_topic, [event])
    [message] = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=1)
    decoded = Decoder(settings.mappings_dir).decode(message.value, message.offset)
    async with pool.acquire() as connection:
        live = connection.transaction()
        await live.start()
        await BatchApplier(connection).apply(decoded.records)
        reprocessing = asyncio.create_task(reprocess(settings, Selection(source_id)))

        async def waiting_on_the_key() -> int:
            return await count(
                pool,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'INSERT INTO companies%'",
            )

        await eventually(
            waiting_on_the_key, satisfied=bool, timeout_s=30, task=reprocessing,
            message="the reprocess waiting on the live insert",
        )  # fmt: skip
        await live.commit()
    report = await reprocessing
    assert (report.rejected, report.applied, report.changes) == (0, 0, 0)  # the live one won
    row = await company(pool, source_id, "R1")
    assert row["trade_name"] == "Raced"


async def test_a_child_a_fixed_mapping_skips_is_dropped_from_its_parents_set(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer, source_id: str
) -> None:
    """A parent rewritten at its own version drops the children of that same version its
    set no longer carries (here: a gift item a new skip rule leaves out)."""
    write_mapping(settings.mappings_dir, source_id, erp_mapping())
    order = {
        "codigo": "PED-1",
        "Itens pedido": [
            {"seq": 1, "produto": "P", "quantidade": "1", "preco": "10,00"},
            {"seq": 2, "produto": "P", "quantidade": "1", "preco": "0,00"},
        ],
    }
    await produce(producer, settings.raw_topic, [raw_event("Pedido", order, source_id=source_id)])

    async def two_items() -> bool:
        sql = "SELECT count(*) FROM order_items WHERE source_id = $1 AND deleted_at IS NULL"
        return await count(pool, sql, source_id) == 2

    await run_live(settings, pool, producer, two_items)
    fixed = erp_mapping()
    fixed["tables"]["Itens pedido"]["skip"] = [{"field": "preco", "in": ["0,00"]}]
    write_mapping(settings.mappings_dir, source_id, fixed)

    report = await reprocess(settings, Selection(source_id))

    items = await pool.fetch(
        "SELECT source_key, deleted_at FROM order_items WHERE source_id = $1 ORDER BY 1",
        source_id,
    )
    assert [(i["source_key"], i["deleted_at"] is None) for i in items] == [
        ("PED-1/1", True),
        ("PED-1/2", False),
    ]
    assert report.changes == 1 and report.skipped == 1  # the item's delete, nothing else


async def test_the_command_prints_progress_tables_and_the_summary(
    settings: Settings, pool: asyncpg.Pool, source_id: str, stored: list[RawEvent]
) -> None:
    write_mapping(settings.mappings_dir, source_id, erp_mapping())
    env = service_env(settings, PONTE_MAPPINGS_DIR=str(settings.mappings_dir))

    async def ponte(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ponte.cli", "reprocess", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await ponte(source_id, "--dry-run")
    assert code == 0, err
    assert "would re-apply 4 record(s)" in err and "nothing written" in err
    assert (await company(pool, source_id, "E1"))["trade_name"] is None

    code, out, err = await ponte(source_id, "--every", "0")
    assert code == 0, err
    assert out.splitlines() == ["Contato\t1", "Empresa\t3"]
    assert f"reprocess {source_id}: 5/5 messages (100%)" in err
    assert "re-applied 3 record(s); 1 unchanged; 1 row(s) changed; 0 rejected" in err
    assert (await company(pool, source_id, "E1"))["trade_name"] == "Acme Shop"

    code, _, err = await ponte(source_id, "--since", "2024-11-14T12:00:00")
    assert code == 2 and "--since: needs an offset" in err
    env["PONTE_RAW_TOPIC"] = "ponte.raw.nowhere"
    code, _, err = await ponte(source_id)
    assert code == 1 and "the raw topic 'ponte.raw.nowhere' does not exist" in err
    assert "Traceback" not in err


def test_the_mapping_digest_is_the_mapping_as_applied() -> None:
    """Stable across forms and key order; changed by a field's mapping, and by the model
    when a column's type changes how an untyped field is read."""
    short = "kind: erp\ntables:\n  Empresa:\n    entity: company\n    key: [codigo]\n" + (
        "    fields: {codigo: code, limite: credit_limit}\n"
    )
    long = "kind: erp\ntables:\n  Empresa:\n    key: [codigo]\n    entity: company\n" + (
        "    fields: {limite: {column: credit_limit}, codigo: {column: code}}\n"
    )
    as_decimal = model_with("credit_limit: {type: decimal, precision: 14, scale: 2}")
    as_text = model_with("credit_limit: text")
    digest = parse_mapping(short, "a.yaml", as_decimal).digest
    assert parse_mapping(long, "b.yaml", as_decimal).digest == digest
    assert parse_mapping(short, "a.yaml", as_text).digest != digest
    ignored = short.replace("limite: credit_limit", "limite: {ignore: true}")
    assert parse_mapping(ignored, "a.yaml", as_decimal).digest != digest


def model_with(column: str) -> CrmModel:
    extension = f"entities:\n  company:\n    columns:\n      {column}\n"
    return build_model([("crm_model.yaml", shipped_model_text()), ("ext.yaml", extension)])
