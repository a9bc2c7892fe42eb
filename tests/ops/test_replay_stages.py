"""``ponte replay`` over every stage's dead letters, with the real broker and PostgreSQL.

The transform's are made the way the transform makes them: the real ingest and transform,
a table the mapping does not have (and a value that was never a raw event), then the
mapping fixed and the dead letters replayed. The deliver's and status back's are made by
their services in ``tests/deliver/test_deliver.py`` and ``test_status_back.py``; here they
are written in those formats to check what each filter selects, over HTTP and the CLI.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from ponte.shared import kafka
from ponte.shared.replay.run import Report, replay
from ponte.shared.replay.selection import Selection
from ponte.shared.settings import Settings
from tests.conftest import RunningIngest, read_topic
from tests.eventually import eventually
from tests.ops.conftest import RunningOps, send_webhook
from tests.ops.test_onboarding_and_replay import dead_letter, erp_body
from tests.stand_ins.serve import serve
from tests.test_cli import ponte

pytestmark = pytest.mark.integration

TRANSFORM_ONLY = ("transform",)


@asynccontextmanager
async def transform(settings: Settings) -> AsyncIterator[None]:
    """The real transform app (consumer included) over the test's raw topic; without the
    classification job, whose re-ranking of companies (a change event each) would land
    in the changes these tests count whenever a slow run reaches its debounce."""
    from ponte.transform.app import create_app

    async with serve(create_app(settings.model_copy(update={"classification_enabled": False}))):
        yield


def mapping_with_clients(directory: Path, source_id: str) -> Path:
    """The fix: the source's own mapping, the default one plus the table it sends."""
    default = Path(__file__).parents[2] / "shared/ponte/shared/mappings/erp.yaml"
    mapping = yaml.safe_load(default.read_text(encoding="utf-8"))
    mapping["tables"]["Cliente"] = {
        "entity": "company",
        "key": ["codigo"],
        "fields": {"codigo": "code", "razao_social": "legal_name"},
    }
    directory.mkdir(exist_ok=True)
    (directory / f"{source_id}.yaml").write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return directory


def events_read(source_id: str) -> float:
    """Raw events the transform has read for this source and not rejected (a stale
    repeat counts here too: it was read, and changed nothing)."""
    sample = {"source": source_id, "outcome": "applied"}
    return REGISTRY.get_sample_value("ponte_transform_events_total", sample) or 0.0


async def companies(pool: asyncpg.Pool, source_id: str) -> dict[str, tuple[str, Any]]:
    rows = await pool.fetch(
        "SELECT source_key, legal_name, version_event_id FROM companies WHERE source_id = $1",
        source_id,
    )
    return {row["source_key"]: (row["legal_name"], row["version_event_id"]) for row in rows}


async def test_transform_dead_letters_go_back_to_the_raw_topic_after_the_fix(
    ingest: RunningIngest, settings: Settings, pool: asyncpg.Pool, source_id: str, tmp_path: Path
) -> None:
    clients = [{"codigo": "C1", "razao_social": "Um"}, {"codigo": "C2", "razao_social": "Dois"}]
    body = erp_body("Cliente", clients)  # a table the default ERP mapping does not have
    assert (await send_webhook(ingest, source_id, body)).status_code == 202
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:  # bytes that were never a raw event, with ingest's identity headers
        await producer.send_and_wait(
            settings.raw_topic,
            key=f"{source_id}/Cliente/C3".encode(),
            value=b"\x00not json",
            headers=[("ponte-source", source_id.encode()), ("ponte-topic", b"Cliente")],
        )
    finally:
        await producer.stop()
    originals = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=3)
    async with transform(settings):
        await read_topic(settings.kafka_bootstrap, settings.transform_dead_letter_topic, expect=3)

    mine = Selection(stages=TRANSFORM_ONLY, source_id=source_id)
    dry = await replay(settings, mine)
    assert dry.dry_run and dry.replayable == 2 and dry.messages == 2
    by_key = {item.key: item for item in dry.items}
    assert set(by_key) == {f"{source_id}/Cliente/C{n}" for n in (1, 2, 3)}
    first = by_key[f"{source_id}/Cliente/C1"]
    assert (first.stage, first.source, first.table, first.target) == (
        "transform",
        source_id,
        "Cliente",
        "",
    )
    assert "'Cliente' is not in the erp mapping" in first.reason and first.failed_at
    original = {m.key: m for m in originals}[f"{source_id}/Cliente/C1".encode()]
    assert first.event_id == orjson.loads(original.value or b"")["event_id"]
    unreadable = by_key[f"{source_id}/Cliente/C3"]
    assert unreadable.not_replayable is not None
    assert "never a readable event" in unreadable.not_replayable
    assert dry.counts()["transform"].listed == 3 and dry.counts()["transform"].replayable == 2
    # The dry run sent nothing: the raw topic holds the three originals only.
    assert len(await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=3)) == 3
    assert await companies(pool, source_id) == {}

    fixed = settings.model_copy(
        update={"mappings_dir": mapping_with_clients(tmp_path / "mappings", source_id)}
    )
    async with transform(fixed):
        sent = await replay(settings, mine, dry_run=False)
        assert sent.replayable == 2 and sent.messages == 2
        await eventually(
            lambda: companies(pool, source_id),
            satisfied=lambda rows: set(rows) == {"C1", "C2"},
            timeout_s=20,
            message="the replayed clients in the CRM model",
        )
        stored = await companies(pool, source_id)
        assert stored["C1"][0] == "Um"
        # Replayed as ingest published them: same key, so same partition, same order.
        raw = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=5)
        replayed = [m for m in raw if "ponte-replayed-from" in dict(m.headers)]
        readable = [m for m in originals if not m.key or not m.key.endswith(b"C3")]
        assert sorted((m.key, m.partition, m.value) for m in replayed) == sorted(
            (m.key, m.partition, m.value) for m in readable
        )

        # Again: the transform reads both and applies neither (it has those versions).
        read_before = events_read(source_id)
        await replay(settings, mine, dry_run=False)
        await eventually(
            lambda: events_read(source_id),
            satisfied=lambda read: read >= read_before + 2,
            timeout_s=20,
            message="the transform to read the second replay",
        )
        assert await companies(pool, source_id) == stored
    changes = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=2)
    assert len(changes) == 2  # one change per client: the second replay made none


def transform_dead_letter(source_id: str, key: str, failed_at: datetime) -> dict[str, Any]:
    """A dead letter in the format the transform writes (``BatchProcessor._dead_letter``)."""
    event = {
        "schema_version": 1,
        "event_id": f"evt-{key}/0",
        "delivery_id": f"evt-{key}",
        "index": 0,
        "count": 1,
        "source_id": source_id,
        "source_kind": "erp",
        "source_event_id": f"src-{key}",
        "topic": "Empresa",
        "operation": "upsert",
        "record_key": key,
        "occurred_at": "2024-11-14T15:01:32Z",
        "received_at": "2024-11-14T15:01:33Z",
        "payload": {"codigo": key},
    }
    return {
        "key": f"{source_id}/Empresa/{key}".encode(),
        "value": orjson.dumps({"event": event, "raw": None, "error": {"code": "invalid_value"}}),
        "headers": [
            (name, value.encode())
            for name, value in {
                "ponte-dlq-code": "invalid_value",
                "ponte-dlq-reason": "cnpj: not a CNPJ",
                "ponte-event-id": f"evt-{key}/0",
                "ponte-source": source_id,
                "ponte-table": "Empresa",
                "ponte-failed-at": failed_at.isoformat(),
            }.items()
        ],
    }


def status_dead_letter(source_id: str, key: str, failed_at: datetime) -> dict[str, Any]:
    """A dead letter in the format status back writes (``status_back.dead_letters``)."""
    return {
        "key": f"{source_id}/order/{key}".encode(),
        "value": orjson.dumps(
            {
                "target": "crm-a",
                "event": {"eventId": 77, "objectId": 9001, "occurredAt": 1},
                "origin": {"source": source_id, "entity": "order", "source_key": key},
            }
        ),
        "headers": [
            (name, value.encode())
            for name, value in {
                "ponte-target": "crm-a",
                "ponte-dlq-reason": "refused: refused with 404",
                "ponte-dlq-last-attempt": failed_at.isoformat(),
                "ponte-entity": "order",
                "ponte-source": source_id,
            }.items()
        ],
    }


@pytest.fixture
async def three_stages(settings: Settings, source_id: str) -> datetime:
    """Dead letters of every stage for ``source_id``, and one deliver dead letter that is
    not JSON; returns now."""
    now = datetime.now(UTC)
    await kafka.ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for topic, letter in (
            (settings.transform_dead_letter_topic, transform_dead_letter(source_id, "E7", now)),
            (settings.deliver_dead_letter_topic, dead_letter(source_id, "E1", now, "crm-a")),
            (
                settings.deliver_dead_letter_topic,
                dead_letter(source_id, "E2", now - timedelta(hours=2), "crm-b"),
            ),
            (settings.status_dead_letter_topic, status_dead_letter(source_id, "P1", now)),
        ):
            await producer.send_and_wait(topic, **letter)
        await producer.send_and_wait(
            settings.deliver_dead_letter_topic,
            key=f"{source_id}/company/E9".encode(),
            value=b"{truncated",
            headers=[("ponte-source", source_id.encode()), ("ponte-target", b"crm-a")],
        )
    finally:
        await producer.stop()
    return now


def keys(report: Report) -> list[str]:
    return sorted(item.key.rsplit("/", 1)[1] for item in report.items)


async def test_filters_select_per_stage_and_a_dry_run_sends_nothing(
    settings: Settings, source_id: str, three_stages: datetime
) -> None:
    now = three_stages

    async def picked(**selection: Any) -> list[str]:
        return keys(await replay(settings, Selection(source_id=source_id, **selection)))

    assert await picked() == ["E1", "E2", "E7", "E9", "P1"]
    assert await picked(stages=("transform",)) == ["E7"]
    assert await picked(stages=("status",)) == ["P1"]
    assert await picked(stages=("deliver",), target_id="crm-a") == ["E1", "E9"]
    assert await picked(target_id="crm-a") == ["E1", "E9", "P1"]  # none of the transform's
    assert await picked(table="Empresa") == ["E7"]
    assert await picked(table="order") == ["P1"]
    assert await picked(entity="company") == ["E1", "E2"]  # E9 has no entity header
    assert await picked(since=now - timedelta(minutes=5)) == ["E1", "E7", "P1"]
    assert await picked(until=now - timedelta(hours=1)) == ["E2"]
    assert await picked(reason="NOT A CNPJ") == ["E7"]
    assert await picked(event_ids=frozenset({"77", "evt-E7/0"})) == ["E7", "P1"]
    assert await picked(keys=frozenset({f"{source_id}/company/E2"})) == ["E2"]

    everything = await replay(settings, Selection(source_id=source_id))
    (broken,) = [item for item in everything.items if item.key.endswith("E9")]
    assert broken.not_replayable == "the dead letter is not JSON"
    assert [item.stage for item in everything.items] == [
        "transform",
        "deliver",
        "deliver",
        "deliver",
        "status",
    ]
    counts = everything.counts()
    assert (counts["deliver"].listed, counts["deliver"].replayable) == (3, 2)
    for topic in (settings.raw_topic, settings.changes_topic, settings.status_topic):
        assert await read_topic(settings.kafka_bootstrap, topic, expect=0, timeout_s=1) == []


async def test_the_api_takes_the_stage_and_sends_each_where_its_stage_reads(
    ops: RunningOps, settings: Settings, source_id: str, three_stages: datetime
) -> None:
    async with ops.client() as client:
        dry = await client.post("/ops/replay", json={"source_id": source_id, "stage": "status"})
        both = await client.post(
            "/ops/replay", json={"source_id": source_id, "entity": "order", "table": "Empresa"}
        )
        stage = await client.post("/ops/replay", json={"stage": "everything"})
        sent = await client.post(
            "/ops/replay",
            json={"source_id": source_id, "since": three_stages.isoformat(), "dry_run": False},
        )
    assert dry.status_code == 200, dry.text
    (item,) = dry.json()["items"]
    assert item["stage"] == "status" and item["external_id"] == f"{source_id}/order/P1"
    assert item["target"] == "crm-a" and item["event_id"] == "77"
    assert item["not_replayable"] is None
    assert dry.json()["stages"] == {"status": {"listed": 1, "replayable": 1}}
    assert both.status_code == 200 and both.json()["items"] == []  # AND, as every filter
    assert stage.status_code == 422 and stage.json()["problems"][0]["field"] == "body.stage"

    assert sent.status_code == 200, sent.text
    assert sent.json()["count"] == 3 and sent.json()["messages"] == 3
    (raw,) = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=1)
    assert raw.key == f"{source_id}/Empresa/E7".encode()
    assert orjson.loads(raw.value or b"")["event_id"] == "evt-E7/0"
    (change,) = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=1)
    assert change.key == f"company/{source_id}/E1".encode()
    (status,) = await read_topic(settings.kafka_bootstrap, settings.status_topic, expect=1)
    assert status.key == b"crm-a/9001"
    assert orjson.loads(status.value or b"")["event"]["eventId"] == 77
    assert dict(status.headers)["ponte-replayed-from"].startswith(
        settings.status_dead_letter_topic.encode()
    )


async def test_the_cli_lists_every_stage_and_refuses_a_time_without_offset(
    settings: Settings, source_id: str, three_stages: datetime, tmp_path: Path
) -> None:
    env = {
        "PONTE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PONTE_TRANSFORM_DEAD_LETTER_TOPIC": settings.transform_dead_letter_topic,
        "PONTE_DELIVER_DEAD_LETTER_TOPIC": settings.deliver_dead_letter_topic,
        "PONTE_STATUS_DEAD_LETTER_TOPIC": settings.status_dead_letter_topic,
    }
    code, out, err = await ponte("replay", "--source", source_id, cwd=tmp_path, env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split("\t")[:4] == ["stage", "source", "table", "key"]
    assert lines[1].split("\t")[:4] == [
        "transform",
        source_id,
        "Empresa",
        f"{source_id}/Empresa/E7",
    ]
    assert lines[-2].endswith("\tNOT REPLAYABLE: the dead letter is not JSON")
    assert "deliver: 3 dead letter(s), 1 not replayable" in err
    assert "would replay 4 dead letter(s) as 4 message(s)" in err

    code, _, err = await ponte("replay", "--since", "2024-11-14T12:00:00", cwd=tmp_path, env=env)
    assert code == 2 and "--since: needs an offset" in err


async def test_one_change_failed_for_two_targets_goes_back_once(
    settings: Settings, source_id: str
) -> None:
    """Both targets read the changes topic: one message replays both dead letters."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for target in ("crm-a", "crm-b"):
            letter = dead_letter(source_id, "E1", datetime.now(UTC), target)
            await producer.send_and_wait(settings.deliver_dead_letter_topic, **letter)
    finally:
        await producer.stop()
    report = await replay(settings, Selection(source_id=source_id), dry_run=False)
    assert report.replayable == 2 and report.messages == 1
    sent = await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=1)
    assert len(sent) == 1


async def test_kept_bytes_go_back_only_when_whole_and_a_raw_event(
    settings: Settings, source_id: str
) -> None:
    """A dead letter without its event (the transform drops it when PostgreSQL refuses
    the payload) keeps the bytes: whole and a raw event, they go back as they were;
    cut, or not an event, the listing says why."""
    event = orjson.loads(transform_dead_letter(source_id, "E5", datetime.now(UTC))["value"])
    original = orjson.dumps(event["event"])

    def without_event(key: str, raw: bytes, truncated: bool) -> dict[str, Any]:
        letter = transform_dead_letter(source_id, key, datetime.now(UTC))
        pointer = {"topic": settings.raw_topic, "partition": 0, "offset": 7, "bytes": 99_999}
        encoded = base64.b64encode(raw).decode()
        value = {"event": None, "raw": {**pointer, "truncated": truncated, "base64": encoded}}
        return {**letter, "value": orjson.dumps(value)}

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for letter in (
            without_event("E5", original, truncated=False),
            without_event("E6", original[:40], truncated=True),
            without_event("E8", b'{"schema_version": 1}', truncated=False),
        ):
            await producer.send_and_wait(settings.transform_dead_letter_topic, **letter)
    finally:
        await producer.stop()
    report = await replay(settings, Selection(source_id=source_id), dry_run=False)
    why = {item.key.rsplit("/", 1)[1]: item.not_replayable for item in report.items}
    assert why["E5"] is None
    assert why["E6"] is not None and "only the first bytes are kept" in why["E6"]
    assert f"99999 bytes are at {settings.raw_topic}/0/7" in why["E6"]
    assert why["E8"] is not None and "is not a Ponte raw event" in why["E8"]
    (sent,) = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=1)
    assert sent.value == original and sent.key == f"{source_id}/Empresa/E5".encode()


async def test_two_stages_on_one_topic_are_refused(settings: Settings) -> None:
    shared = settings.model_copy(
        update={"status_dead_letter_topic": settings.deliver_dead_letter_topic}
    )
    with pytest.raises(ValueError, match="PONTE_STATUS_DEAD_LETTER_TOPIC must differ"):
        await replay(shared, Selection())
