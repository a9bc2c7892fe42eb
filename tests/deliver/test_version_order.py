"""Deliver orders a record's versions as the transform does (``ponte.shared.versions``):
at equal times the sequence, never the event ids as text ("evt-9" > "evt-10")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from ponte.deliver import references
from ponte.deliver.changes import Change, latest_per_record
from ponte.deliver.references import Missing
from ponte.deliver.targets import Target

AT = datetime(2024, 11, 14, 15, 5, tzinfo=UTC)


def target() -> Target:
    return Target(
        id=f"t-{uuid.uuid4().hex[:8]}",
        kind="test",
        base_url="http://crm.invalid",
        objects={"order": {"object_type": "deals", "properties": {"total": "amount"}}},
    )


def change(event_id: str, seq: int | None, source_id: str = "s", offset: int = 0) -> Change:
    return Change(
        entity="order",
        source_id=source_id,
        source_key="PED-1",
        row_id=1,
        operation="upsert",
        version_at=AT,
        version_event_id=event_id,
        row={"total": event_id},
        topic="ponte.changes",
        partition=0,
        offset=offset,
        version_seq=seq,
    )


def test_the_batch_keeps_the_larger_sequence_whatever_the_ids_say() -> None:
    older, newer = change("evt-9/000000", 5), change("evt-10/000000", 6)
    for batch in ([older, newer], [newer, older]):
        assert latest_per_record(target(), batch) == [newer]
    # An old change event (no sequence) is older than any with one.
    assert latest_per_record(target(), [newer, change("evt-99/000000", None)]) == [newer]


@pytest.mark.integration
async def test_a_waiting_change_supersedes_one_with_a_smaller_sequence(
    pool: asyncpg.Pool,
) -> None:
    """The waiting row stores the sequence and SQL compares it: the change that waits
    (evt-10, sequence 6) is newer than evt-9 at sequence 5 (older as a sequence, larger as
    text), and older than evt-8 at sequence 7."""
    here = target()
    source_id = f"s-{uuid.uuid4().hex[:8]}"
    waiting = change("evt-10/000000", 6, source_id)
    await references.park(pool, here, [(waiting, Missing("company_id", "company", 1))])
    stored = await pool.fetchrow(
        "SELECT version_seq FROM waiting_deliveries WHERE target_id = $1", here.id
    )
    assert stored is not None and stored["version_seq"] == 6
    record = ("order", source_id, "PED-1")
    assert await references.newer_waiting(pool, here, [change("evt-9/000000", 5, source_id)]) == {
        record
    }
    assert await references.newer_waiting(pool, here, [change("evt-8/000000", 7, source_id)]) == (
        set()
    )
    # Settled by a newer one (sequence 7), not by an older one (sequence 5).
    await references.settle(pool, here, [change("evt-9/000000", 5, source_id)])
    assert (
        await pool.fetchval("SELECT count(*) FROM waiting_deliveries WHERE target_id = $1", here.id)
        == 1
    )
    await references.settle(pool, here, [change("evt-8/000000", 7, source_id)])
    assert (
        await pool.fetchval("SELECT count(*) FROM waiting_deliveries WHERE target_id = $1", here.id)
        == 0
    )
