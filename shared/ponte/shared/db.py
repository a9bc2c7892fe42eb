"""PostgreSQL access: the asyncpg pool the services share, and schema migrations.

Services talk to PostgreSQL through one asyncpg pool each (one round trip per statement,
binary COPY for batches). The schema is owned by Alembic; ``migrate`` is what
``ponte migrate``, ``ponte dev`` and the Kubernetes migration Job run.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time
from decimal import Decimal
from importlib import resources
from typing import Any

import asyncpg
import asyncpg.pool
import orjson
from alembic import command
from alembic.config import Config
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from ponte.shared.settings import Settings

log = logging.getLogger(__name__)

DbConnection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
"""A connection, bare or borrowed from a pool: what repositories take."""


UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)
"""Errors that say the database cannot work right now, not that the data is bad."""


def alembic_config(settings: Settings) -> Config:
    """An Alembic config that needs no alembic.ini: the scripts ship inside the package."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("ponte.shared") / "migrations"))
    config.set_main_option("sqlalchemy.url", settings.database_url)
    # For migrations that encrypt or decrypt stored secrets (0012); None without a key,
    # and such a migration then refuses to run if there is anything to convert.
    config.attributes["secrets_key"] = (
        settings.secrets_key.get_secret_value() if settings.secrets_key else None
    )
    return config


def migrate(settings: Settings, revision: str = "heads") -> list[str]:
    """Bring Ponte's own tables to ``revision`` (Alembic), then, at the newest revision,
    the CRM tables to this process's model (``ponte.shared.crm_schema``: additive only).
    Returns the model changes applied. Synchronous: call it before an event loop runs,
    or through ``asyncio.to_thread`` (Alembic's env starts a loop of its own)."""
    from ponte.shared.crm_model import crm_model
    from ponte.shared.crm_schema import apply_model_sync

    command.upgrade(alembic_config(settings), revision)
    if revision not in ("head", "heads"):
        return []  # an older revision of Ponte's tables: the model is the newest's
    return apply_model_sync(settings.database_url, crm_model()).applied


def _json_default(value: Any) -> Any:
    """Decimals, dates and times (row values) as text inside JSONB."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value, default=_json_default)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(connection: asyncpg.Connection) -> None:
    """JSONB in and out as Python objects, in the binary format (a version byte, then the
    text) so that binary COPY, which the history writer uses, can encode them too."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
    )


async def _no_reset(connection: asyncpg.Connection) -> None:
    return None


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 10, wait_s: float = 0.0
) -> asyncpg.Pool:
    """An asyncpg pool; with ``wait_s`` it retries while the database is still starting."""

    async def connect() -> asyncpg.Pool:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            settings.asyncpg_dsn,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            command_timeout=30,
            # Ponte keeps no session state on a connection (no LISTEN, advisory locks are
            # released explicitly), so asyncpg's reset query on every release is pure cost.
            reset=_no_reset,
            # asyncpg prepares every statement. After a few executions PostgreSQL may settle
            # on a generic plan, which for Ponte's batch lookups (``= ANY`` / ``unnest`` of
            # arrays whose size varies per batch) can read a whole table per key: the
            # deliver benchmark measured 0.2-5.7 s per 1,000-change lookup on a generic plan
            # and milliseconds on a custom one (docs/benchmarks-deliver.md). Planning each
            # execution costs far less than that.
            server_settings={"plan_cache_mode": "force_custom_plan"},
        )
        return pool

    if wait_s <= 0:
        return await connect()
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(wait_s),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception_type((OSError, asyncpg.PostgresError)),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    ):
        with attempt:
            return await connect()
    raise AssertionError("unreachable: tenacity reraises")


async def ping(pool: asyncpg.Pool, timeout_s: float = 1.0) -> bool:
    """True when the database answers a trivial query within ``timeout_s``."""
    try:
        async with pool.acquire(timeout=timeout_s) as connection:
            await connection.fetchval("SELECT 1", timeout=timeout_s)
        return True
    except Exception:  # any failure means "not ready"; the reason is logged by the caller
        return False


def as_record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None
