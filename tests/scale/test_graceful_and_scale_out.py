"""SIGTERM under load and scale-out by consumer group, each service as its own process
against the real broker and PostgreSQL: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest

from ponte.shared import kafka
from ponte.shared.settings import Settings
from ponte.shared.signatures import sign_standard
from tests.conftest import (
    read_topic,
    service_env,
    start_service,
    wait_ready,
    write_sources,
)
from tests.eventually import eventually
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration
SECRET = "graceful-test-secret"


def signed(source_id: str, number: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "id": f"evt-{source_id}-{number}",
            "occurred_at": "14/11/2024 12:01",
            "table": "Pedido",
            "rows": [{"codigo": f"P{number}", "total": f"{number},00"}],
        }
    ).encode()
    timestamp = int(time.time())
    webhook_id = f"msg-{number}"
    return body, {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(SECRET, webhook_id, timestamp, body),
    }


async def test_sigterm_under_load_loses_and_doubles_nothing(
    settings: Settings,
    pool: asyncpg.Pool,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """Load on ingest; SIGTERM the transform mid-run (it hands its partitions back), start
    another; then SIGTERM ingest mid-load: readiness fails first, in-flight requests finish,
    and every webhook answered 202 ends up stored exactly once."""
    source_id = f"g-{uuid.uuid4().hex[:8]}"
    sources = write_sources(
        tmp_path / "sources.yaml", [{"id": source_id, "kind": "erp", "secrets": [SECRET]}]
    )
    await kafka.ensure_topics(settings)
    ingest_env = service_env(
        settings, PONTE_SOURCES_FILE=str(sources), PONTE_SHUTDOWN_DRAIN_S="1.0"
    )
    ingest_url = f"http://127.0.0.1:{ingest_env['PONTE_HTTP_PORT']}"
    ingest = start_service("ingest", ingest_env)
    processes.append(ingest)
    first_env = service_env(settings)
    transform = start_service("transform", first_env)
    processes.append(transform)
    await wait_ready(ingest_url, ingest)
    await wait_ready(f"http://127.0.0.1:{first_env['PONTE_HTTP_PORT']}", transform)

    accepted: set[int] = set()
    refused_ready = False
    number = 0

    async def send_until(stop_after: int, client: httpx.AsyncClient) -> None:
        nonlocal number
        while number < stop_after:
            number += 1
            body, headers = signed(source_id, number)
            try:
                response = await client.post(
                    f"{ingest_url}/webhooks/{source_id}", content=body, headers=headers
                )
            except httpx.TransportError:
                continue  # closed during shutdown: never answered 2xx, the sender retries
            if response.status_code == 202:
                accepted.add(int(json.loads(body)["rows"][0]["codigo"][1:]))

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(send_until(150, client) for _ in range(8)))
        transform.send_signal(signal.SIGTERM)  # mid-run, while events keep coming
        sending = asyncio.gather(*(send_until(300, client) for _ in range(8)))
        assert transform.wait(30) == 0
        second_env = service_env(settings)
        second = start_service("transform", second_env)
        processes.append(second)
        await sending
        ingest.send_signal(signal.SIGTERM)
        readiness = await client.get(f"{ingest_url}/readyz")
        refused_ready = readiness.status_code == 503
        await asyncio.gather(*(send_until(340, client) for _ in range(4)))
    assert refused_ready, "readiness must fail as soon as shutdown starts"
    assert ingest.wait(30) == 0
    assert len(accepted) > 250

    await eventually(
        lambda: pool.fetchval("SELECT count(*) FROM orders WHERE source_id = $1", source_id),
        satisfied=lambda stored: stored >= len(accepted),
        timeout_s=60,
        interval_s=0.2,
        message=f"the {len(accepted)} accepted orders stored",
    )
    rows = await pool.fetch("SELECT source_key, total FROM orders WHERE source_id = $1", source_id)
    assert {int(r["source_key"][1:]) for r in rows} == accepted  # none lost, none extra
    assert all(r["total"] == Decimal(r["source_key"][1:]) for r in rows)
    history = await pool.fetchval(
        "SELECT count(*) FROM webhook_requests WHERE source_id = $1 AND status_code = 202",
        source_id,
    )
    assert history == len(accepted)  # the history queue was flushed at shutdown
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0


async def test_two_transforms_share_partitions_and_one_leaving_hands_over(
    settings: Settings,
    pool: asyncpg.Pool,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """Both workers get partitions and apply events; then one leaves, and the events
    produced after it left (on every partition) are applied by the other."""
    source_id = f"s-{uuid.uuid4().hex[:8]}"
    half = 1500
    await kafka.ensure_topics(settings)
    envs = [service_env(settings, PONTE_TRANSFORM_BATCH_SIZE="50") for _ in range(2)]
    workers = [start_service("transform", env) for env in envs]
    processes.extend(workers)
    for env, worker in zip(envs, workers, strict=True):
        await wait_ready(f"http://127.0.0.1:{env['PONTE_HTTP_PORT']}", worker)

    async def produce(numbers: range) -> None:
        producer = kafka.create_producer(settings)
        await producer.start()
        try:
            for number in numbers:
                event = raw_event(
                    "Pedido", {"codigo": f"P{number}", "total": f"{number},00"}, source_id=source_id
                )
                await producer.send(
                    settings.raw_topic, event.model_dump_json().encode(), key=event.partition_key
                )
            await producer.flush()
        finally:
            await producer.stop()

    async def stored() -> int:
        return int(
            await pool.fetchval("SELECT count(*) FROM orders WHERE source_id = $1", source_id)
        )

    async def both_worked() -> bool:
        return all([await applied_by(env, source_id) > 0 for env in envs])

    # A little at a time until both members have applied something: the group may still
    # be settling when the first events arrive.
    sent = 0

    async def shared_after_more() -> bool:
        nonlocal sent
        if await both_worked():
            return True
        assert sent < half, f"partitions were not shared after {sent} events"
        await produce(range(sent, sent + 50))
        sent += 50
        return False

    await eventually(
        shared_after_more, timeout_s=60, interval_s=0.3, message="both transforms to apply events"
    )
    workers[0].send_signal(signal.SIGTERM)  # leaves: its partitions move to the other
    assert workers[0].wait(30) == 0
    await produce(range(sent, 2 * half))  # on every partition: needs the handover

    await eventually(
        stored,
        satisfied=lambda count: count == 2 * half,
        timeout_s=90,
        interval_s=0.1,
        message=f"all {2 * half} events stored",
    )
    rows = await pool.fetch("SELECT source_key, total FROM orders WHERE source_id = $1", source_id)
    assert len(rows) == 2 * half
    assert all(r["total"] == Decimal(r["source_key"][1:]) for r in rows)
    changes = await read_topic(
        settings.kafka_bootstrap, settings.changes_topic, expect=2 * half, timeout_s=30
    )
    keys = {
        json.loads(m.value)["source_key"]
        for m in changes
        if json.loads(m.value)["entity"] == "order"
    }
    assert len(keys) == 2 * half
    workers[1].send_signal(signal.SIGTERM)
    assert workers[1].wait(30) == 0


async def applied_by(env: dict[str, str], source_id: str) -> float:
    """Events this worker applied, from its own /metrics."""
    return await metric(
        env, f'ponte_transform_events_total{{outcome="applied",source="{source_id}"}}'
    )


async def metric(env: dict[str, str], sample: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{env['PONTE_HTTP_PORT']}/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample))


async def test_two_delivers_share_partitions_and_one_leaving_hands_over(
    settings: Settings,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    import orjson
    import uvicorn

    from ponte.shared.embedded import free_port
    from ponte.shared.http import server_config
    from tests.stand_ins.hubspot import HubSpotState, create_stand_in

    state = HubSpotState(limit=1000, interval_s=1.0)
    port = free_port()
    server = uvicorn.Server(server_config(create_stand_in(state), host="127.0.0.1", port=port))
    serving = asyncio.create_task(server.serve())
    source_id = f"ds-{uuid.uuid4().hex[:8]}"
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        json.dumps(
            {
                "targets": [
                    {
                        "id": "hs",
                        "kind": "hubspot",
                        "base_url": f"http://127.0.0.1:{port}",
                        "token": "pat-test",
                        "sources": [source_id],
                        "batch_size": 10,
                        "rate_limit": {"requests": 1000, "per_seconds": 1},
                        "objects": {
                            "company": {
                                "object_type": "companies",
                                "properties": {"legal_name": "name"},
                            }
                        },
                    }
                ]
            }
        )
    )
    try:
        await kafka.ensure_topics(settings)

        async def produce_changes(numbers: range) -> None:
            producer = kafka.create_producer(settings)
            await producer.start()
            try:
                for minute in (1, 2):
                    for number in numbers:
                        value = {
                            "entity": "company",
                            "source_id": source_id,
                            "source_key": f"E{number}",
                            "row_id": number,
                            "operation": "upsert",
                            "changed": ["legal_name"],
                            "row": {"legal_name": f"v{minute}"},
                            "version": {
                                "at": f"2024-11-14T15:0{minute}:00+00:00",
                                "event_id": f"e{minute}",
                            },
                        }
                        await producer.send(
                            settings.changes_topic,
                            orjson.dumps(value),
                            key=f"company/{source_id}/E{number}".encode(),
                        )
                await producer.flush()
            finally:
                await producer.stop()

        envs = [service_env(settings, PONTE_TARGETS_FILE=str(targets)) for _ in range(2)]
        workers = [start_service("deliver", env) for env in envs]
        processes.extend(workers)
        for env, worker in zip(envs, workers, strict=True):
            await wait_ready(f"http://127.0.0.1:{env['PONTE_HTTP_PORT']}", worker)
        delivered_sample = 'ponte_deliver_records_total{outcome="delivered",target="hs"}'

        async def both_worked() -> bool:
            return all([await metric(env, delivered_sample) > 0 for env in envs])

        def delivered() -> int:
            return sum(
                1
                for r in state.objects.get("companies", {}).values()
                if r["properties"].get("name") == "v2"
            )

        # Produce a little at a time until both members have delivered something: the
        # group may still be settling when the first changes arrive.
        sent = 0

        async def shared_after_more() -> bool:
            nonlocal sent
            if await both_worked():
                return True
            assert sent < 250, f"partitions were not shared after {sent} records"
            await produce_changes(range(sent, sent + 10))
            sent += 10
            return False

        await eventually(
            shared_after_more, timeout_s=60, interval_s=0.3, message="both delivers to deliver"
        )
        workers[0].send_signal(signal.SIGTERM)
        # Not a blocking wait: the stand-in answers from this very event loop.
        assert await asyncio.to_thread(workers[0].wait, 30) == 0
        await produce_changes(range(sent, 300))  # on every partition: needs the handover
        await eventually(
            delivered,
            satisfied=lambda count: count == 300,
            timeout_s=60,
            interval_s=0.1,
            message="all 300 records delivered in their newest version",
        )
        assert len(state.objects["companies"]) == 300  # none lost, none duplicated
        last: dict[str, str] = {}
        for _, external, properties in state.writes:  # never back in time, per record
            assert properties["name"] >= last.get(external, "")
            last[external] = properties["name"]
        workers[1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(workers[1].wait, 30) == 0
    finally:
        server.should_exit = True
        await serving
