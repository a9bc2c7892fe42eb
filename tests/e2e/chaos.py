"""The chaos run: the whole system as separate processes under mixed load, with faults.

Ingest, transform and deliver run as ``ponte <service>`` processes against a durable
Tansu broker (its data survives a restart), a real PostgreSQL and a HubSpot stand-in.
Senders behave like real webhook senders: a request that is not answered 2xx is sent
again later, unchanged. While they send, the run kills services with SIGKILL and restarts
them, restarts the broker, stops PostgreSQL for a while, and makes the CRM answer 429s
and 5xx. Then it waits for the system to settle and checks the promises (``verify``):

- every accepted (2xx) record is in PostgreSQL once, in its newest accepted version;
- every record reached the CRM once, in that version, or sits in the dead-letter topic
  with a reason; per record, the CRM never went back to an older version;
- the ingest answered 503, never 2xx, while the broker was down;
- no secret appears in any service's log.

``tests/e2e/test_chaos.py`` runs a short form in CI; ``bench/chaos.py`` a longer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
import yaml

from ponte.shared import db, kafka
from ponte.shared.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from ponte.shared.http import server_config
from ponte.shared.secret_box import generate_key
from ponte.shared.settings import Settings
from tests.conftest import wait_ready
from tests.e2e.load import (
    ERP_SECRET,
    SHOP_SECRET,
    WOO_SECRET,
    Expected,
    Sources,
    Webhook,
    mixed_load,
)
from tests.eventually import eventually
from tests.stand_ins.hubspot import HubSpotState, create_stand_in

SECRETS_KEY = generate_key()
"""The key of a run outside the test suite (which sets PONTE_SECRETS_KEY for all)."""

HUBSPOT_TOKEN = "pat-chaos-secret-token"
SERVICES = ("ingest", "transform", "deliver")


@dataclass
class Scale:
    companies: int = 40
    orders: int = 80
    shop_orders: int = 25
    senders: int = 6
    kill_rounds: int = 2
    broker_down_s: float = 4.0
    database_down_s: float = 30.0
    crm_storm_s: float = 8.0
    settle_timeout_s: float = 150.0
    seed: int = 7


@dataclass
class Report:
    sent: int = 0
    expected: Expected = field(default_factory=Expected)
    during_broker_outage: dict[int, int] = field(default_factory=dict)
    kills: list[str] = field(default_factory=list)
    crm_rate_limited: int = 0
    crm_failed_calls: int = 0
    """Calls the CRM answered 5xx during the storm."""
    settle_s: float = 0.0
    problems: list[str] = field(default_factory=list)


class Service:
    """One ``ponte <service>`` process; its log appended to a file across restarts."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.env, self.log = name, env, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PONTE_HTTP_PORT']}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ponte.cli", self.name],
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


async def wait_for_service(service: Service, timeout_s: float = 60) -> None:
    assert service.process is not None
    await wait_ready(service.url, service.process, timeout_s, log=service.log)


class ChaosRun:
    def __init__(self, workdir: Path, scale: Scale) -> None:
        self.workdir = workdir
        self.scale = scale
        self.rng = random.Random(scale.seed)
        self.report = Report()
        self.broker = EmbeddedBroker(workdir / "broker", durable=True)
        # Crash-safe commits: the run kills PostgreSQL and then checks what was committed.
        self.database = EmbeddedPostgres(workdir / "db", crash_safe=True)
        self.crm = HubSpotState(limit=100, interval_s=1.0)
        self.sources = Sources("chaos-erp", "chaos-shopify", "chaos-woo")
        self.services: dict[str, Service] = {}
        self.broker_down = False
        self.faults_over = False
        self.pace_s = 0.0
        """Pause of each sender between requests, so the load spans the faults."""
        self.settings: Settings | None = None

    # --- set-up -------------------------------------------------------------------------

    def _write_config(self, crm_url: str) -> tuple[Path, Path]:
        sources = self.workdir / "sources.yaml"
        sources.write_text(yaml.safe_dump({"sources": self.sources.config()}))
        targets = self.workdir / "targets.yaml"
        targets.write_text(
            yaml.safe_dump(
                {
                    "targets": [
                        {
                            "id": "hubspot-chaos",
                            "kind": "hubspot",
                            "base_url": crm_url,
                            "token": "${CHAOS_HUBSPOT_TOKEN}",
                            "rate_limit": {"requests": 100, "per_seconds": 1.0},
                            "objects": {
                                "company": {
                                    "object_type": "companies",
                                    "properties": {"legal_name": "name"},
                                },
                                "order": {
                                    "object_type": "deals",
                                    "properties": {"total": "amount", "code": "dealname"},
                                },
                            },
                        }
                    ]
                }
            )
        )
        return sources, targets

    def _env(self, sources: Path, targets: Path) -> dict[str, str]:
        assert self.settings is not None
        return {
            **os.environ,
            "PONTE_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "PONTE_DATABASE_URL": self.database.url,
            # The source secrets at rest: the suite's key, or one for this run (bench).
            "PONTE_SECRETS_KEY": os.environ.get("PONTE_SECRETS_KEY") or SECRETS_KEY,
            "PONTE_KAFKA_IDEMPOTENCE": "false",
            "PONTE_KAFKA_REPLICATION_FACTOR": "1",
            "PONTE_SOURCES_FILE": str(sources),
            "PONTE_TARGETS_FILE": str(targets),
            "PONTE_PRODUCE_TIMEOUT_S": "3",
            "PONTE_DELIVER_MAX_ATTEMPTS": "100",
            "PONTE_DELIVER_MAX_AGE_S": "600",
            "PONTE_PARKED_SWEEP_INTERVAL_S": "2",
            "PONTE_LOG_LEVEL": "INFO",  # INFO on purpose: more lines for the secrets check
            "CHAOS_HUBSPOT_TOKEN": HUBSPOT_TOKEN,
        }

    async def _serve_crm(self) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
        port = free_port()
        server = uvicorn.Server(
            server_config(create_stand_in(self.crm), host="127.0.0.1", port=port)
        )
        task = asyncio.create_task(server.serve())
        await eventually(
            lambda: server.started,
            timeout_s=30,
            interval_s=0.02,
            task=task,
            message="the CRM stand-in to listen",
        )
        return server, task, f"http://127.0.0.1:{port}"

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> Report:
        """Start the stack, run, check; the broker and the database are stopped whatever
        happens (a failed start included)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.database.start()
            self.broker.start()
            return await self._run_on_stack()
        finally:
            self.broker.close()
            self.database.stop(mode="immediate")

    async def _run_on_stack(self) -> Report:
        self.settings = Settings(
            _env_file=None,
            kafka_bootstrap=self.broker.bootstrap,
            database_url=self.database.url,
            kafka_idempotence=False,
            kafka_replication_factor=1,
        )
        await asyncio.to_thread(db.migrate, self.settings)
        await kafka.ensure_topics(self.settings)
        crm_server, crm_task, crm_url = await self._serve_crm()
        sources, targets = self._write_config(crm_url)
        base_env = self._env(sources, targets)
        for name in SERVICES:
            env = {**base_env, "PONTE_HTTP_PORT": str(free_port())}
            self.services[name] = Service(name, env, self.workdir / f"{name}.log")
            self.services[name].start()
        try:
            for service in self.services.values():
                await wait_for_service(service)
            load = mixed_load(
                self.sources,
                companies=self.scale.companies,
                orders=self.scale.orders,
                shop_orders=self.scale.shop_orders,
                seed=self.scale.seed,
            )
            self.report.sent = len(load)
            self.pace_s = self.scale.senders * self._fault_duration_s() / len(load)
            queue: asyncio.Queue[Webhook] = asyncio.Queue()
            for webhook in load:
                queue.put_nowait(webhook)
            sending = asyncio.gather(*(self._sender(queue) for _ in range(self.scale.senders)))
            await self._faults()
            self.faults_over = True
            await sending
            await self._settle()
            self.report.crm_rate_limited = self.crm.rate_limited
            self.report.problems += await self.verify()
        finally:
            for service in self.services.values():
                service.stop()
            crm_server.should_exit = True
            await crm_task
        return self.report

    async def _sender(self, queue: asyncio.Queue[Webhook]) -> None:
        """Send until every webhook is answered 2xx, like a sender with retries."""
        ingest = self.services["ingest"]
        async with httpx.AsyncClient(timeout=15) as client:
            while not queue.empty():
                webhook = queue.get_nowait()
                outage = self.broker_down  # counted only if sent and answered in the outage
                try:
                    response = await client.post(
                        f"{ingest.url}{webhook.path}", content=webhook.body, headers=webhook.headers
                    )
                    status = response.status_code
                except httpx.TransportError:
                    status = 0  # no answer: killed mid-request, or not up yet
                if outage and self.broker_down:
                    counts = self.report.during_broker_outage
                    counts[status] = counts.get(status, 0) + 1
                    if status == 200 and not self.report.expected.was_accepted(webhook):
                        self.report.problems.append(f"{webhook.record}: 200 without a broker")
                self.report.expected.answered(webhook, status)
                if not self.faults_over:
                    await asyncio.sleep(self.pace_s)  # spread the load over the faults
                if not 200 <= status < 300:
                    if 400 <= status < 500 and status not in (408, 409, 429):  # 409: retry later
                        self.report.problems.append(f"{webhook.record}: answered {status}")
                        continue
                    queue.put_nowait(webhook)  # retried later, unchanged
                    await asyncio.sleep(0.2)  # the sender's own back-off

    def _fault_duration_s(self) -> float:
        """About how long ``_faults`` takes (its pauses average their nominal length)."""
        scale = self.scale
        kills = scale.kill_rounds * len(SERVICES) * 2.5
        return kills + 6.0 + scale.broker_down_s + scale.database_down_s + scale.crm_storm_s

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds * (0.5 + self.rng.random()))

    async def _kill_and_restart(self, name: str) -> None:
        service = self.services[name]
        self.report.kills.append(f"{name}@{time.strftime('%H:%M:%S')}")
        service.kill()
        await asyncio.sleep(0.5)  # the scenario: down for a moment
        service.start()

    async def _faults(self) -> None:
        """The fault schedule: kills interleaved with outages, while the senders send."""
        for _ in range(self.scale.kill_rounds):
            for name in self.rng.sample(SERVICES, len(SERVICES)):
                await self._pause(2.0)
                await self._kill_and_restart(name)
        await self._pause(2.0)
        # The broker restarts: the ingest must answer 503 meanwhile, never 202.
        self.broker.stop(kill=True)
        self.broker_down = True
        await asyncio.sleep(self.scale.broker_down_s)
        self.broker_down = False
        self.broker.start()
        await self._pause(2.0)
        # The CRM throttles and fails for a while, with changes still flowing.
        self.crm.limit = 3
        self.crm.fail_next = [503, 500, 502] * 3
        await asyncio.sleep(self.scale.crm_storm_s)
        # A loaded machine may leave deliver between batches for the whole window (still
        # catching up after the broker's restart): the storm lasts until it meets a call,
        # so the faults it proves are ones that happened.
        deadline = time.monotonic() + 60
        while len(self.crm.fail_next) == 9 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        self.report.crm_failed_calls = 9 - len(self.crm.fail_next)
        self.crm.limit = 100
        await self._pause(2.0)
        # PostgreSQL stops.
        await asyncio.to_thread(self.database.stop, mode="immediate")
        await asyncio.sleep(self.scale.database_down_s)
        await asyncio.to_thread(self.database.start)
        await self._pause(2.0)
        await self._kill_and_restart(self.rng.choice(SERVICES))

    async def _settle(self) -> None:
        """Wait until every accepted record is stored and delivered in its newest version."""
        assert self.settings is not None
        started = time.monotonic()
        # Not settling in time is not a failure of its own: the full ``verify`` after this
        # lists what is missing, in the report (bench/chaos.py prints it).
        with contextlib.suppress(AssertionError):
            await eventually(
                lambda: self.verify(quick=True),
                satisfied=lambda problems: not problems,
                timeout_s=self.scale.settle_timeout_s,
                interval_s=1.0,
                message="every accepted record stored and delivered",
            )
        self.report.settle_s = time.monotonic() - started

    # --- the promises -------------------------------------------------------------------

    async def _stored(self, connection: asyncpg.Connection) -> dict[tuple[str, str, str], Any]:
        stored: dict[tuple[str, str, str], Any] = {}
        for entity, table, column in (
            ("company", "companies", "legal_name"),
            ("order", "orders", "total"),
        ):
            rows = await connection.fetch(
                f"SELECT source_id, source_key, {column} AS value FROM {table} "
                "WHERE source_id = ANY($1::text[]) AND deleted_at IS NULL",
                [self.sources.erp, self.sources.shopify, self.sources.woo],
            )
            for row in rows:
                stored[(row["source_id"], entity, row["source_key"])] = row["value"]
        return stored

    async def verify(self, *, quick: bool = False) -> list[str]:
        """What is not (yet) as promised; empty when every promise holds."""
        problems: list[str] = []
        try:
            connection = await asyncpg.connect(self.database.url.replace("+asyncpg", ""))
        except (OSError, asyncpg.PostgresError) as error:
            return [f"database unreachable: {error!r}"]
        try:
            stored = await self._stored(connection)
            failed = {
                (r["source_id"], r["entity"], r["source_key"]): r["last_error"]
                for r in await connection.fetch(
                    "SELECT source_id, entity, source_key, last_error FROM deliveries "
                    "WHERE state = 'failed'"
                )
            }
        finally:
            await connection.close()
        crm = {
            "company": self.crm.objects.get("companies", {}),
            "order": self.crm.objects.get("deals", {}),
        }
        for record, (version, value) in self.report.expected.newest.items():
            source, entity, key = record
            if entity == "company" and record not in stored:
                problems.append(f"{record} v{version} accepted but not stored")
                continue
            if record not in stored:
                problems.append(f"{record} v{version} accepted but not stored")
                continue
            if not _same(stored[record], value):
                problems.append(f"{record}: stored {stored[record]!r}, newest accepted {value!r}")
            external = f"{source}/{entity}/{key}"
            sent = crm[entity].get(external)
            if record in failed:
                continue  # in the dead-letter topic with its reason (checked below)
            if sent is None:
                problems.append(f"{external} never reached the CRM")
            else:
                prop = "name" if entity == "company" else "amount"
                if not _same(sent["properties"].get(prop), stored[record]):
                    problems.append(
                        f"{external}: CRM has {sent['properties'].get(prop)!r}, "
                        f"stored {stored[record]!r}"
                    )
        if quick:
            return problems
        problems += self._crm_order_problems()
        problems += [
            f"{record}: dead-lettered without a reason" for record, why in failed.items() if not why
        ]
        problems += self._secrets_in_logs()
        return problems

    def _crm_order_problems(self) -> list[str]:
        """Per record, each write to the CRM is no older than the one before."""
        problems = []
        last: dict[str, Decimal] = {}
        for object_type, external, properties in self.crm.writes:
            if object_type != "deals" or properties.get("amount") is None:
                continue
            amount = Decimal(str(properties["amount"]))
            if external in last and amount < last[external]:
                problems.append(f"{external}: CRM went back from {last[external]} to {amount}")
            last[external] = amount
        counts: dict[str, int] = defaultdict(int)
        for objects in self.crm.objects.values():
            for external in objects:
                counts[external] += 1
        problems += [
            f"{external} is {n} times in the CRM" for external, n in counts.items() if n > 1
        ]
        return problems

    def _secrets_in_logs(self) -> list[str]:
        secrets = (ERP_SECRET, SHOP_SECRET, WOO_SECRET, HUBSPOT_TOKEN)
        problems = []
        for service in self.services.values():
            text = service.log.read_text(errors="replace")
            problems += [f"{service.name}.log contains a secret" for s in secrets if s in text]
        return problems


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        try:
            return Decimal(str(a)) == Decimal(str(b))
        except ArithmeticError:
            return False
    return a == b
