"""Locks per key for connectors that look a record up before they create it.

A CRM without a native upsert (Ploomes, ``kind: rest``) is written by "find by natural key
or Ponte's id, then create or update": two calls. Two writers of one key that both look
before either creates both create, and the CRM has a duplicate. So a writer holds its
record's keys (its external id, its natural-key values) from its lookup to its write.

``KeyLocks.hold(keys)`` takes two locks per key, all of them in sorted order:
1. an ``asyncio.Lock`` in this process, so writers of one process queue here and never
   reach the database or take a connection while they wait;
2. when a pool is given, a PostgreSQL session-level advisory lock, so writers in other
   processes (two deliver replicas in one consumer group, a second deliver run beside the
   service) queue too. This is what stops two *different* Ponte records with one CNPJ,
   handled by two replicas at the same instant, from both creating.

The advisory lock id is 64 bits of BLAKE2b over a namespace, the target's id and the key:
stable across processes and releases (Python's ``hash`` is salted per process), and apart
from Ponte's other advisory locks (the pull scheduler, the outbox relay). Two keys that
collide only serialise two writers that need not wait: the safe direction.

How the database locks are taken and given back:
- All keys of one holder on one connection, in one statement, in ascending id order. Every
  holder everywhere takes ids in that order, so holders of {a, b} and {b, a} never wait on
  each other in a cycle (PostgreSQL would otherwise end one with a deadlock error).
- Released with ``pg_advisory_unlock`` in a ``finally``. A session lock survives a failed
  or cancelled statement (it is not transactional), and ``db.create_pool`` does not reset
  sessions, so a pooled connection must never keep one. When the lock or unlock statement
  fails, times out or is cancelled (the holder's task was cancelled while it waited),
  ``pg_advisory_unlock_all()`` runs on the same connection: asyncpg first has the server
  cancel the pending statement and waits for that, so the locks the statement had already
  taken are given back. If even that fails, the connection is terminated. NOT simply
  terminated at once: measured here, a backend blocked in ``pg_advisory_lock`` does not
  notice its client has gone, and keeps the locks it took until the one it waits for is
  granted. A lost connection takes its locks with it: the other writer proceeds and finds
  the record by lookup, which is the safe direction.
- A wait longer than ``wait_s`` raises ``TimeoutError`` (one of ``db.UNAVAILABLE``), like
  a database outage: the deliver consumer retries the batch in place, nothing was written
  for that record, and no delivery attempt is spent. A key is normally held only for one
  record's calls, each bounded by the HTTP timeout.

Why a pool of its own (``app.lifespan`` makes it, ``KEY_LOCK_CONNECTIONS`` wide): a holder
keeps its connection for the whole of its HTTP calls, including token-bucket waits. On the
service's main pool, a burst of holders would leave the delivery bookkeeping and the
readiness ping waiting behind CRM calls. The dedicated pool bounds the holders with a
connection in this process; others queue in ``pool.acquire`` holding only their in-process
locks, so no cycle can form (a holder with a connection never waits for anything but
advisory locks, which other holders with connections release). It opens connections only
when used (``min_size=0``), so a deliver without Ploomes or REST targets opens none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import asyncpg

from ponte.shared import db

log = logging.getLogger(__name__)

KEY_LOCK_CONNECTIONS = 8
"""Connections of the key-lock pool: records being written at once by lookup-then-write
connectors in one process. Ploomes allows 2 calls a second per account and a REST target
``concurrency`` calls at once (4 by default), so 8 covers two such targets at full speed;
more holders queue for a connection. Each deliver replica opens at most this many extra
PostgreSQL connections. Not bounded per target (yet): a backlog on Ploomes, whose holders
wait on its token bucket while holding, can keep all of them busy and slow a REST target
of the same process to Ploomes' pace."""
LOCK_WAIT_S = 60.0
"""Longest wait for another process's holder before the batch is retried (see the module)."""
NAMESPACE = b"ponte.deliver.key\x00"

_LOCK = "SELECT pg_advisory_lock(id) FROM unnest($1::bigint[]) AS id"
"""unnest yields the array in order, so the locks are taken in the order given."""
_UNLOCK = "SELECT bool_and(pg_advisory_unlock(id)) FROM unnest($1::bigint[]) AS id"
_UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"
GIVE_BACK_S = 10.0
"""Longest wait for the server to cancel a failed statement and give every lock back."""


def advisory_id(namespace: str, key: str) -> int:
    """The advisory lock id of ``key`` within ``namespace`` (the target's id): a signed
    64-bit integer, as ``pg_advisory_lock(bigint)`` takes."""
    digest = hashlib.blake2b(
        NAMESPACE + namespace.encode() + b"\x00" + key.encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class KeyLocks:
    """Per-key mutual exclusion for one target: in this process always, across processes
    when ``pool`` is given (see the module)."""

    def __init__(
        self, namespace: str, pool: asyncpg.Pool | None = None, *, wait_s: float = LOCK_WAIT_S
    ) -> None:
        self._namespace = namespace
        self._pool = pool
        self._wait_s = wait_s
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}
        """key -> (its lock, holders and waiters): forgotten when nobody uses it, so the
        map does not grow with every key ever written."""

    @property
    def shared(self) -> bool:
        """True when other processes' holders are excluded too (a pool was given)."""
        return self._pool is not None

    @property
    def keys_in_use(self) -> int:
        """Keys held or waited for in this process."""
        return len(self._local)

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold every key in ``keys`` for the block; duplicates are taken once."""
        ordered = sorted(set(keys))
        async with self._hold_local(ordered):
            if self._pool is None:
                yield
                return
            ids = sorted({advisory_id(self._namespace, key) for key in ordered})
            async with self._pool.acquire() as connection:
                await self._lock(connection, ids)
                try:
                    yield
                finally:
                    await self._unlock(connection, ids)

    @asynccontextmanager
    async def _hold_local(self, ordered: list[str]) -> AsyncIterator[None]:
        locks = []
        for key in ordered:
            lock, users = self._local.get(key) or (asyncio.Lock(), 0)
            self._local[key] = (lock, users + 1)
            locks.append(lock)
        acquired: list[asyncio.Lock] = []
        try:
            for lock in locks:
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
            for key in ordered:
                lock, users = self._local[key]
                if users <= 1:
                    del self._local[key]
                else:
                    self._local[key] = (lock, users - 1)

    async def _lock(self, connection: db.DbConnection, ids: list[int]) -> None:
        """Take every id, in order; on any failure (a timeout, a cancellation, a lost
        connection) give back the ids this statement already took."""
        try:
            await connection.execute(_LOCK, ids, timeout=self._wait_s)
        except BaseException:
            await _give_back_all(connection)
            raise

    async def _unlock(self, connection: db.DbConnection, ids: list[int]) -> None:
        """Give every id back (and, should that fail, everything the session holds)."""
        try:
            released = await connection.fetchval(_UNLOCK, ids, timeout=self._wait_s)
        except BaseException:
            await _give_back_all(connection)
            raise
        if released is not True:  # some id was not held: never pool an unknown session
            log.error(
                "advisory key lock was not held at release; session closed",
                extra={"namespace": self._namespace, "ids": len(ids)},
            )
            connection.terminate()


async def _give_back_all(connection: db.DbConnection) -> None:
    """After a lock or unlock statement failed: every advisory lock of the session given
    back once the server has cancelled that statement (asyncpg waits for it), or the
    session closed. Shielded, so a second cancellation cannot leave a pooled connection
    holding locks: it terminates the connection instead."""
    give_back = asyncio.ensure_future(connection.execute(_UNLOCK_ALL, timeout=GIVE_BACK_S))
    give_back.add_done_callback(_quiet)
    try:
        await asyncio.shield(give_back)
    except asyncio.CancelledError:
        connection.terminate()
        raise
    except Exception:  # the caller raises the first failure; this one is only logged
        connection.terminate()
        log.warning("advisory key locks not given back; session closed", exc_info=True)


def _quiet(task: asyncio.Future[str]) -> None:
    """Retrieve a shielded give-back's outcome, so an abandoned one is not reported."""
    if not task.cancelled():
        task.exception()
