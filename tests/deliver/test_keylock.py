"""Key locks across processes, against the real PostgreSQL: each "process" is a KeyLocks
with a pool of its own (its own sessions), as two deliver replicas have. Who waits is
read from ``pg_locks`` (a waiter is an advisory lock not yet granted), not guessed from
sleeps. Then the gap this closes, end to end: two Ploomes connectors, each with its own
locks and pool, writing two records with one CNPJ at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from ponte.deliver.app import build_connectors
from ponte.deliver.connectors.base import Outgoing
from ponte.deliver.connectors.ploomes import PloomesConnector
from ponte.deliver.connectors.registry import parse_target
from ponte.deliver.connectors.rest import RestConnector
from ponte.deliver.keylock import KeyLocks, advisory_id
from ponte.deliver.ratelimit import TokenBucket
from ponte.shared import db
from ponte.shared.settings import Settings
from tests.deliver.test_ploomes import by_external_id, cnpj, ploomes, target_for
from tests.eventually import eventually
from tests.stand_ins.ploomes import PloomesState

pytestmark = pytest.mark.integration

__all__ = ["ploomes"]  # the stand-in fixture, used here too

TARGET = "pl-locks"
WAIT_S = 10.0


@pytest.fixture
async def pools(base_settings: Settings) -> AsyncIterator[list[asyncpg.Pool]]:
    """Three pools: three processes' sessions."""
    made = [await db.create_pool(base_settings, min_size=0, max_size=4) for _ in range(3)]
    yield made
    for pool in made:
        await pool.close()


async def advisory_locks(pool: asyncpg.Pool, keys: list[str], granted: bool) -> int:
    """How many of ``keys``' advisory locks are held (granted) or waited for."""
    ids = [advisory_id(TARGET, key) for key in keys]
    count: int = await pool.fetchval(
        """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND objsubid = 1 AND granted = $2
          AND ((classid::bigint << 32) | objid::bigint) = ANY(
              SELECT id & x'ffffffffffffffff'::bigint FROM unnest($1::bigint[]) AS id)
        """,
        ids,
        granted,
    )
    return count


async def waiters(pool: asyncpg.Pool, keys: list[str], count: int) -> None:
    """Wait until PostgreSQL shows ``count`` of ``keys``' advisory locks waited for."""
    await eventually(
        lambda: advisory_locks(pool, keys, granted=False),
        satisfied=lambda waiting: waiting == count,
        timeout_s=WAIT_S,
        interval_s=0.01,
        message=f"{count} waiting advisory locks on {keys}",
    )


async def holder(
    locks: KeyLocks, keys: list[str], inside: asyncio.Event, leave: asyncio.Event, log: list[str]
) -> None:
    async with locks.hold(keys):
        log.append(f"in {keys}")
        inside.set()
        await leave.wait()
        log.append(f"out {keys}")


async def test_two_processes_on_one_key_run_one_after_the_other(
    pool: asyncpg.Pool, pools: list[asyncpg.Pool]
) -> None:
    first, second = KeyLocks(TARGET, pools[0]), KeyLocks(TARGET, pools[1])
    log: list[str] = []
    entered = [asyncio.Event(), asyncio.Event()]
    leave = [asyncio.Event(), asyncio.Event()]
    a = asyncio.create_task(holder(first, ["k"], entered[0], leave[0], log))
    await asyncio.wait_for(entered[0].wait(), WAIT_S)
    b = asyncio.create_task(holder(second, ["k"], entered[1], leave[1], log))
    await waiters(pool, ["k"], 1)
    assert not entered[1].is_set()  # waiting in PostgreSQL for the first holder
    leave[0].set()
    await asyncio.wait_for(entered[1].wait(), WAIT_S)
    leave[1].set()
    await asyncio.wait_for(asyncio.gather(a, b), WAIT_S)
    assert log == ["in ['k']", "out ['k']", "in ['k']", "out ['k']"]
    assert await advisory_locks(pool, ["k"], granted=True) == 0


async def test_different_keys_do_not_wait(pools: list[asyncpg.Pool]) -> None:
    first, second = KeyLocks(TARGET, pools[0]), KeyLocks(TARGET, pools[1])
    inside, leave = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(holder(first, ["k1"], inside, leave, []))
    await asyncio.wait_for(inside.wait(), WAIT_S)
    async with asyncio.timeout(WAIT_S):
        async with second.hold(["k2"]):
            assert not a.done()  # the first still holds k1
    leave.set()
    await a


async def test_opposite_orders_never_deadlock(
    pool: asyncpg.Pool, pools: list[asyncpg.Pool]
) -> None:
    """The interleaving that deadlocks without sorting, forced: C holds b; B asks for
    {b, a} and A for {a, b}. Taken as given, B would queue on b first, and when C lets go,
    B would take b and wait on a, held by A, which waits on b (PostgreSQL would end one with
    a deadlock error). In sorted order both queue on the same first lock instead."""
    holders = [KeyLocks(TARGET, one) for one in pools]
    log: list[str] = []
    c_in, c_leave = asyncio.Event(), asyncio.Event()
    c = asyncio.create_task(holder(holders[2], ["b"], c_in, c_leave, log))
    await asyncio.wait_for(c_in.wait(), WAIT_S)
    done = [asyncio.Event(), asyncio.Event()]
    go = asyncio.Event()
    go.set()
    b = asyncio.create_task(holder(holders[1], ["b", "a"], done[1], go, log))
    await waiters(pool, ["a", "b"], 1)
    a = asyncio.create_task(holder(holders[0], ["a", "b"], done[0], go, log))
    await waiters(pool, ["a", "b"], 2)
    c_leave.set()
    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(a, b, c)  # a deadlock error or a hang fails here
    assert log[:2] == ["in ['b']", "out ['b']"]  # A and B only after C
    assert sorted(log[2:]) == ["in ['a', 'b']", "in ['b', 'a']", "out ['a', 'b']", "out ['b', 'a']"]
    assert await advisory_locks(pool, ["a", "b"], granted=True) == 0


async def test_opposite_orders_in_one_process_never_deadlock(pools: list[asyncpg.Pool]) -> None:
    locks = KeyLocks(TARGET, pools[0])

    async def write(keys: list[str]) -> None:
        async with locks.hold(keys):
            await asyncio.sleep(0)  # the scenario: let the other writers interleave here

    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(*(write(["x", "y"] if n % 2 else ["y", "x"]) for n in range(50)))
    assert locks.keys_in_use == 0


async def test_an_exception_inside_releases_every_key(
    pool: asyncpg.Pool, pools: list[asyncpg.Pool]
) -> None:
    first, second = KeyLocks(TARGET, pools[0]), KeyLocks(TARGET, pools[1])
    with pytest.raises(ValueError, match="boom"):
        async with first.hold(["e1", "e2"]):
            assert await advisory_locks(pool, ["e1", "e2"], granted=True) == 2
            raise ValueError("boom")
    assert await advisory_locks(pool, ["e1", "e2"], granted=True) == 0
    assert first.keys_in_use == 0
    async with asyncio.timeout(WAIT_S), second.hold(["e2", "e1"]):
        pass


async def test_a_holder_cancelled_while_waiting_leaves_no_lock_behind(
    pool: asyncpg.Pool, pools: list[asyncpg.Pool]
) -> None:
    """The cancelled holder had taken its first key and was waiting on its second in the
    same statement: the first is given back at once (not when the second comes free), and
    its pool goes on working."""
    first, second = KeyLocks(TARGET, pools[0]), KeyLocks(TARGET, pools[1])
    low, high = sorted(["c1", "c2"], key=lambda key: advisory_id(TARGET, key))
    inside, leave = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(holder(first, [high], inside, leave, []))
    await asyncio.wait_for(inside.wait(), WAIT_S)
    waiter = asyncio.create_task(holder(second, [low, high], asyncio.Event(), leave, []))
    await waiters(pool, [high], 1)
    assert await advisory_locks(pool, [low], granted=True) == 1  # taken by the waiter
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await advisory_locks(pool, [low, high], granted=False) == 0
    assert await advisory_locks(pool, [low], granted=True) == 0
    leave.set()
    await a
    async with asyncio.timeout(WAIT_S), second.hold([high, low]):
        assert await advisory_locks(pool, [low, high], granted=True) == 2
    assert await advisory_locks(pool, [low, high], granted=True) == 0
    assert second.keys_in_use == 0


async def test_a_wait_past_its_limit_times_out_and_gives_back_what_it_took(
    pool: asyncpg.Pool, pools: list[asyncpg.Pool]
) -> None:
    """The consumer retries a batch in place on TimeoutError; the waiter's first key, taken
    before it waited on the second, must not stay held meanwhile."""
    first = KeyLocks(TARGET, pools[0])
    impatient = KeyLocks(TARGET, pools[1], wait_s=0.3)
    low, high = sorted(["t1", "t2"], key=lambda key: advisory_id(TARGET, key))
    inside, leave = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(holder(first, [high], inside, leave, []))
    await asyncio.wait_for(inside.wait(), WAIT_S)
    with pytest.raises(TimeoutError):
        async with impatient.hold([low, high]):
            pytest.fail("entered while another process held the key")
    assert await advisory_locks(pool, [low], granted=True) == 0
    assert await advisory_locks(pool, [low, high], granted=False) == 0
    leave.set()
    await a
    async with asyncio.timeout(WAIT_S), impatient.hold([low, high]):
        pass


async def test_without_a_pool_only_this_process_is_held(pool: asyncpg.Pool) -> None:
    locks = KeyLocks(TARGET)
    assert not locks.shared
    async with locks.hold(["p"]):
        assert await advisory_locks(pool, ["p"], granted=True) == 0


async def test_the_service_builds_lookup_then_write_connectors_with_shared_locks(
    settings: Settings, pools: list[asyncpg.Pool]
) -> None:
    """``app.lifespan`` passes its key-lock pool to ``build_connectors``: Ploomes and REST
    connectors then lock across replicas, and without a pool only within the process."""
    targets = [
        target_for("http://127.0.0.1:9", "wiring"),
        parse_target(
            {
                "id": "rest-wiring",
                "kind": "rest",
                "base_url": "http://127.0.0.1:9",
                "objects": {
                    "company": {
                        "object_type": "organizations",
                        "create": {"method": "POST", "path": "/orgs"},
                        "update": {"method": "PUT", "path": "/orgs/{crm_id}"},
                    }
                },
            }
        ),
    ]
    for pool, shared in ((pools[0], True), (None, False)):
        connectors, clients = build_connectors(targets, settings, pool)
        for client in clients:
            await client.aclose()
        for _, connector in connectors.values():
            assert isinstance(connector, PloomesConnector | RestConnector)
            assert connector._locks.shared is shared


# --- end to end: two Ploomes connectors, as two deliver replicas ---------------------------


async def write_from_two_replicas(
    state: PloomesState, url: str, pools: list[asyncpg.Pool] | None, records: int
) -> list[dict[str, str]]:
    """Two connectors (own HTTP client, own KeyLocks, own pool when given) writing, at the
    same moment, ``records`` pairs of different Ponte records sharing one CNPJ each."""
    target = target_for(url, "replicas", parallel_records=16)
    state.delay_s = 0.05  # every call answers slowly: the race window is wide open
    batches = [
        [
            Outgoing(f"{source}/company/{n}", {"Name": f"Acme {n}", "CNPJ": cnpj(n)})
            for n in range(records)
        ]
        for source in ("erp", "crm2")
    ]
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as one,
        httpx.AsyncClient(base_url=url, timeout=10) as two,
    ):
        connectors = []
        for n, client in enumerate((one, two)):
            locks = KeyLocks(target.id, pools[n] if pools else None)
            connectors.append(
                PloomesConnector.for_target(target, client, TokenBucket(10_000, 60), locks)
            )
        outcomes = await asyncio.gather(
            *(
                connector.upsert_batch("companies", batch)
                for connector, batch in zip(connectors, batches, strict=True)
            )
        )
    assert all(not outcome.failed for outcome in outcomes)
    return [outcome.delivered for outcome in outcomes]


async def test_two_replicas_writing_one_cnpj_make_one_ploomes_client(
    ploomes: tuple[PloomesState, str], pools: list[asyncpg.Pool]
) -> None:
    state, url = ploomes
    delivered = await write_from_two_replicas(state, url, pools, records=10)
    assert len(state.records["Contacts"]) == 10
    cnpjs = [record["CNPJ"] for record in state.records["Contacts"].values()]
    assert sorted(cnpjs) == [cnpj(n) for n in range(10)]
    for n in range(10):
        assert delivered[0][f"erp/company/{n}"] == delivered[1][f"crm2/company/{n}"]
    # One record per CNPJ, carrying the external id of whichever write came last.
    assert sum(len(found) for found in by_external_id(state).values()) == 10


async def test_without_the_database_lock_two_replicas_do_duplicate(
    ploomes: tuple[PloomesState, str],
) -> None:
    """The control: the same writes with in-process locks only make duplicates, so the
    test above would see the gap if the database lock stopped working."""
    state, url = ploomes
    await write_from_two_replicas(state, url, None, records=10)
    assert len(state.records["Contacts"]) > 10
