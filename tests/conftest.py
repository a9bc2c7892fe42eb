"""Session-wide real infrastructure: one Tansu broker and one PostgreSQL on free loopback
ports, started once for the whole run and stopped after it (``ponte.shared.embedded``).
Tests that need an outage start their own broker so the shared one stays up."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from ponte.shared import db
from ponte.shared.embedded import EmbeddedBroker, EmbeddedPostgres, embedded_stack, free_port
from ponte.shared.kafka import ensure_topics
from ponte.shared.secret_box import SecretBox, generate_key
from ponte.shared.settings import Settings
from tests.eventually import eventually

SETTLE_S = 0.5
"""How long ``read_topic`` reads on after the expected messages, for an extra one."""

SECRETS_KEY = os.environ.setdefault("PONTE_SECRETS_KEY", generate_key())
"""Source secrets are stored encrypted (``ponte.shared.secret_box``): one key for the
session, set in the environment so every Settings and every service process (service_env,
the chaos run) reads it, as ``ponte dev`` generates one per run."""

BOX = SecretBox([key for key in SECRETS_KEY.split(",") if key.strip()])
"""The session's box, for tests that store or read sources directly."""


@pytest.fixture(scope="session")
def stack() -> Iterator[tuple[EmbeddedBroker, EmbeddedPostgres]]:
    with embedded_stack() as running:
        yield running


@pytest.fixture(scope="session")
def base_settings(stack: tuple[EmbeddedBroker, EmbeddedPostgres]) -> Settings:
    """Settings pointing at the session's broker and database, schema migrated."""
    broker, database = stack
    settings = Settings(
        _env_file=None,
        kafka_bootstrap=broker.bootstrap,
        database_url=database.url,
        kafka_idempotence=False,
        kafka_replication_factor=1,
        # Tansu starts groups at generation 0, from which aiokafka sends no LeaveGroup: a
        # stopped consumer's partitions wait out its session. Short sessions, fast tests.
        kafka_session_timeout_ms=3000,
        raw_topic_partitions=3,
        produce_timeout_s=3.0,
        history_flush_interval_s=0.05,
        sources_refresh_s=0.5,
    )
    db.migrate(settings)
    return settings


@pytest.fixture
async def fresh_database(base_settings: Settings) -> AsyncIterator[str]:
    """A database of this test's own on the session's server, with Ponte's own
    migrations only (no CRM model applied: ``ponte.shared.crm_schema`` is the test's)."""
    from alembic import command

    name = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base_settings.database_url.replace("+asyncpg", ""))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = base_settings.database_url.rsplit("/", 1)[0] + f"/{name}"
        settings = base_settings.model_copy(update={"database_url": url})
        await asyncio.to_thread(command.upgrade, db.alembic_config(settings), "heads")
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def pool(base_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(base_settings)
    yield pool
    await pool.close()


@dataclass
class RunningIngest:
    url: str
    settings: Settings

    def webhook(self, source_id: str) -> str:
        return f"{self.url}/webhooks/{source_id}"


def write_sources(path: Path, sources: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"sources": sources}), encoding="utf-8")
    return path


async def serve_ingest(
    settings: Settings, *, create_topics: bool = True
) -> AsyncIterator[RunningIngest]:
    """Run the real ingest app over real HTTP (uvicorn) inside the test's event loop."""
    from ponte.ingest.app import create_app
    from tests.stand_ins.serve import serve

    if create_topics:
        await ensure_topics(settings)
    async with serve(create_app(settings)) as url:
        yield RunningIngest(url, settings)


def unique_topic(prefix: str = "ponte.raw") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """The session's broker and database, with topics and consumer groups of this test's
    own, so tests never read each other's messages."""
    return base_settings.model_copy(
        update={
            "raw_topic": unique_topic(),
            "changes_topic": unique_topic("ponte.changes"),
            "transform_dead_letter_topic": unique_topic("ponte.transform.dlq"),
            "deliver_dead_letter_topic": unique_topic("ponte.deliver.dlq"),
            "status_topic": unique_topic("ponte.status"),
            "status_dead_letter_topic": unique_topic("ponte.status.dlq"),
            "transform_group_id": unique_topic("transform"),
            "deliver_group_id": unique_topic("deliver"),
        }
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Service processes a test starts; killed at the end if the test did not stop them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout_s: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message of ``topic`` from the start, waiting until ``expect`` have arrived
    (failing at ``timeout_s`` with how many did), then reading on for a settle window so
    an unexpected extra message is seen too."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    messages: list[ConsumerRecord[bytes, bytes]] = []

    async def read() -> int:
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            messages.extend(records)
        return len(messages)

    try:
        await eventually(
            read,
            satisfied=lambda count: count >= expect,
            timeout_s=timeout_s,
            interval_s=0,  # ``getmany`` itself waits up to 200 ms for messages
            message=f"{expect} messages on {topic}",
        )
        # The settle window is a window, not a wait: what arrives in it is read at its end.
        await asyncio.sleep(SETTLE_S)
        await read()
    finally:
        await consumer.stop()
    return messages


def event_of(message: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    assert message.value is not None
    value: dict[str, Any] = json.loads(message.value)
    return value


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a ``ponte <service>`` process needs to use these settings."""
    import os

    env = {
        **os.environ,
        "PONTE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PONTE_DATABASE_URL": settings.database_url,
        "PONTE_KAFKA_IDEMPOTENCE": "false",
        "PONTE_KAFKA_REPLICATION_FACTOR": "1",
        "PONTE_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "PONTE_RAW_TOPIC": settings.raw_topic,
        "PONTE_CHANGES_TOPIC": settings.changes_topic,
        "PONTE_TRANSFORM_DEAD_LETTER_TOPIC": settings.transform_dead_letter_topic,
        "PONTE_DELIVER_DEAD_LETTER_TOPIC": settings.deliver_dead_letter_topic,
        "PONTE_STATUS_TOPIC": settings.status_topic,
        "PONTE_STATUS_DEAD_LETTER_TOPIC": settings.status_dead_letter_topic,
        "PONTE_TRANSFORM_GROUP_ID": settings.transform_group_id,
        "PONTE_DELIVER_GROUP_ID": settings.deliver_group_id,
        "PONTE_HTTP_PORT": str(free_port()),
        "PONTE_LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


_SERVICE_LOGS: dict[int, Path] = {}


def start_service(service: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``ponte <service>`` as its own process, its log in a file (``service_log``): a pipe
    nobody reads fills up and blocks the service once it logs enough."""
    import tempfile

    log = Path(tempfile.mkstemp(prefix=f"ponte-{service}-", suffix=".log")[1])
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "ponte.cli", service],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    _SERVICE_LOGS[process.pid] = log
    return process


def service_log(process: subprocess.Popen[bytes], tail: int = 4000) -> str:
    """The end of a ``start_service`` process's log, for a failure message."""
    log = _SERVICE_LOGS.get(process.pid)
    return log.read_text(errors="replace")[-tail:] if log and log.exists() else ""


async def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout_s: float = 30, log: Path | None = None
) -> None:
    """Wait for a service process's /readyz to answer 200; fail at once, with the end of
    its log (``log``, else ``service_log``), if the process exits meanwhile."""
    import httpx

    def tail() -> str:
        if log is not None and log.exists():
            return log.read_text(errors="replace")[-4000:]
        return service_log(process)

    async with httpx.AsyncClient(timeout=2) as client:

        async def ready() -> int | str:
            assert process.poll() is None, tail()
            try:
                return (await client.get(f"{url}/readyz")).status_code
            except httpx.TransportError as error:
                return repr(error)  # not listening yet

        await eventually(
            ready,
            satisfied=lambda status: status == 200,
            timeout_s=timeout_s,
            interval_s=0.1,
            message=f"{url}/readyz to answer 200",
        )


def app_factory(service: str) -> Any:
    """The ``create_app`` of a service by name, imported only when asked for."""
    import importlib

    return importlib.import_module(f"ponte.{service}.app").create_app
