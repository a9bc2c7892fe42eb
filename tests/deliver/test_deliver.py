"""Deliver against a local HubSpot stand-in over real HTTP, the real broker and PostgreSQL:
exactly what arrived, in order, with rate limits, retries, dead letters and replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ponte.deliver.connectors.hubspot import HubSpotTarget
from ponte.deliver.targets import Target
from ponte.shared.replay.run import replay
from ponte.shared.replay.selection import Selection
from ponte.shared.settings import Settings
from tests.conftest import read_topic
from tests.deliver.conftest import company_change, count_deliveries, produce, run_deliver
from tests.stand_ins.hubspot import HubSpotState, create_stand_in
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration


@pytest.fixture
async def hubspot() -> AsyncIterator[tuple[HubSpotState, str]]:
    state = HubSpotState(limit=20, interval_s=1.0)
    async with serve(create_stand_in(state)) as url:
        yield state, url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deliver_max_attempts": 4, "deliver_max_age_s": 20.0})


def target_for(url: str, source_id: str) -> HubSpotTarget:
    return HubSpotTarget(
        id=f"hs-{source_id}",
        kind="hubspot",
        base_url=url,
        token="pat-test",
        sources=[source_id],
        rate_limit={"requests": 20, "per_seconds": 1.0},
        objects={
            "company": {
                "object_type": "companies",
                "properties": {"legal_name": "name", "document": "cnpj"},
            }
        },
    )


async def test_latest_versions_arrive_once_through_rate_limits_and_5xx(
    settings: Settings, pool: asyncpg.Pool, hubspot: tuple[HubSpotState, str]
) -> None:
    state, url = hubspot
    source_id = f"d-{uuid.uuid4().hex[:8]}"
    target = target_for(url, source_id).model_copy(update={"batch_size": 5})
    changes = [
        company_change(source_id, f"E{n}", minute, legal_name=f"Acme {n} v{minute}")
        for n in range(150)
        for minute in (1, 2)
    ]
    state.fail_next = [503, 503, 500]  # a short 5xx storm
    await produce(settings, changes)

    async def done() -> bool:
        return await count_deliveries(pool, target) == 150

    await run_deliver(settings, pool, target, done, timeout_s=60)

    companies = state.objects["companies"]
    assert len(companies) == 150  # no record lost, none duplicated (upsert by ponte_id)
    for n in range(150):
        assert companies[f"{source_id}/company/E{n}"]["properties"]["name"] == f"Acme {n} v2"
    # Per record, the CRM never went back in time.
    last: dict[str, str] = {}
    for _, external, properties in state.writes:
        assert properties["name"] >= last.get(external, "")
        last[external] = properties["name"]
    crm_ids = await pool.fetch("SELECT crm_id FROM deliveries WHERE target_id = $1", target.id)
    assert all(row["crm_id"] for row in crm_ids)
    # Every delivered record's latency, publication to acknowledgement, is measured.
    latencies = REGISTRY.get_sample_value(
        "ponte_deliver_latency_seconds_count", {"target": target.id}
    )
    assert latencies is not None and latencies >= 150
    assert (
        await read_topic(
            settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=0, timeout_s=1
        )
        == []
    )


async def test_refused_records_dead_letter_and_replay_after_fix(
    settings: Settings, pool: asyncpg.Pool, hubspot: tuple[HubSpotState, str]
) -> None:
    state, url = hubspot
    source_id = f"d-{uuid.uuid4().hex[:8]}"
    target = target_for(url, source_id)
    state.refuse_values = {"00000000000000"}
    await produce(
        settings,
        [
            company_change(source_id, "OK", 1, legal_name="Fine Ltda", document="11222333000181"),
            company_change(source_id, "BAD", 1, legal_name="Bad Ltda", document="00000000000000"),
        ],
    )

    async def done() -> bool:
        return (
            await count_deliveries(pool, target) == 1
            and await count_deliveries(pool, target, "failed") == 1
        )

    await run_deliver(settings, pool, target, done)
    dead = await read_topic(settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=1)
    assert len(dead) == 1
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert headers["ponte-dlq-status"] == "207" and "not valid" in headers["ponte-dlq-reason"]
    assert headers["ponte-original-topic"] == settings.changes_topic
    assert headers["ponte-dlq-attempts"] == "1"

    # Dry run: prints, sends nothing.
    only_this = Selection(stages=("deliver",), target_id=target.id)
    assert (await replay(settings, only_this, dry_run=True)).replayable == 1
    state.refuse_values = set()  # the CRM-side fix
    assert (await replay(settings, only_this, dry_run=False)).replayable == 1
    await run_deliver(settings, pool, target, lambda: _delivered(pool, target, 2))
    assert (
        state.objects["companies"][f"{source_id}/company/BAD"]["properties"]["cnpj"]
        == "00000000000000"
    )
    writes = len(state.writes)
    skipped = _skipped(target)
    # Replaying again delivers nothing new: that version is already there. The consumer
    # runs until it has read the replayed change and counted it skipped (its condition is
    # that, not the deliveries table, which already held before it started).
    await replay(settings, only_this, dry_run=False)

    async def replay_read() -> bool:
        return _skipped(target) == skipped + 1

    await run_deliver(settings, pool, target, replay_read)
    assert len(state.writes) == writes
    assert await count_deliveries(pool, target) == 2


async def _delivered(pool: asyncpg.Pool, target: Target, count: int) -> bool:
    return await count_deliveries(pool, target) == count


def _skipped(target: Target) -> float:
    """Changes the deliver consumer read for ``target`` and skipped as already there."""
    sample = {"target": target.id, "outcome": "skipped"}
    return REGISTRY.get_sample_value("ponte_deliver_records_total", sample) or 0.0
