"""``ponte dev``: the whole of Ponte on one machine, on embedded defaults.

Starts a throwaway PostgreSQL and a Tansu broker on loopback (``ponte.shared.embedded``),
migrates the schema, creates the topics, writes a sources file with demo sources and fresh
secrets, serves ingest, transform and the ops page, and prints a signed curl to try. A
tail prints each raw and change event as it lands so the flow is visible. Ctrl-C (or
SIGTERM) stops the services, the broker and the database, and removes their files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn
import yaml
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from ponte import dev_env
from ponte.shared import db
from ponte.shared.embedded import embedded_stack, free_port
from ponte.shared.kafka import ensure_topics
from ponte.shared.logs import configure_logging, printable
from ponte.shared.sample_requests import example_order, signed_curl
from ponte.shared.secret_box import generate_key
from ponte.shared.settings import Settings


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


DEMO_SOURCES: dict[str, dict[str, str]] = {
    "erp-demo": {
        "kind": "erp",
        "display_name": "Demo ERP",
        "erp_name": "Demo ERP",
        "erp_version": "1.0",
    },
    "shopify-demo": {"kind": "shopify", "display_name": "Demo Shopify shop"},
    "woo-demo": {"kind": "woocommerce", "display_name": "Demo WooCommerce shop"},
}


def write_demo_sources(path: Path) -> dict[str, str]:
    """One source of each kind, each with a fresh secret; returns the secrets by source."""
    demo = DEMO_SOURCES
    keys = {
        source_id: "whsec_" + secrets.token_urlsafe(24)
        if spec["kind"] == "erp"
        else secrets.token_urlsafe(24)
        for source_id, spec in demo.items()
    }
    document = {
        "sources": [
            {"id": source_id, **spec, "secrets": [keys[source_id]]}
            for source_id, spec in demo.items()
        ]
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return keys


async def _tail(settings: Settings) -> None:
    """Print one line per raw event and per change event, so the flow is visible."""
    consumer = AIOKafkaConsumer(
        settings.raw_topic,
        settings.changes_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        async for message in consumer:
            print(tail_line(message.topic == settings.raw_topic, message.value), flush=True)
    finally:
        await consumer.stop()


def tail_line(raw: bool, value: bytes) -> str:
    """One console line for a raw or change event. Every field comes from a sender (a
    table name, a key), so control characters are escaped: a newline in a table name
    must not forge a line of its own on the console."""
    event = json.loads(value)
    if raw:
        fields = (event["event_id"], event["source_id"], event["topic"], event["operation"])
        return (
            "[raw]    "
            + " ".join(map(printable, fields))
            + f" key={printable(event['record_key'])}"
        )
    changed = ",".join(event["changed"])
    return (
        f"[change] {printable(event['entity'])} {printable(event['source_id'])}/"
        f"{printable(event['source_key'])} {printable(event['operation'])} "
        f"changed={printable(changed)}"
    )


class _QuietServer(uvicorn.Server):
    """Two servers share this process, so neither installs signal handlers: ``_serve``
    owns SIGINT/SIGTERM and stops both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(port: int) -> socket.socket:
    """A socket listening on ``port``, or on a free one if that is taken, bound now and
    handed to its server: choosing a port and binding it later let another process take
    it in between (seen with the test suite's parallel workers)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def _serve(
    settings: Settings, port: int, keys: dict[str, str], kinds: dict[str, str]
) -> None:
    from ponte.ingest.app import create_app as create_ingest
    from ponte.ops.app import create_app as create_ops
    from ponte.shared.http import server_config
    from ponte.transform.app import create_app as create_transform

    await ensure_topics(settings)
    sockets = {"ingest": _listen(port), "transform": _listen(port + 1), "ops": _listen(port + 2)}
    ports = {name: sock.getsockname()[1] for name, sock in sockets.items()}
    port = ports["ingest"]
    apps = {
        "ingest": create_ingest(settings),
        "transform": create_transform(settings),
        "ops": create_ops(settings),
    }
    servers = {
        name: _QuietServer(server_config(app, host="127.0.0.1", port=ports[name]))
        for name, app in apps.items()
    }
    tasks = [
        asyncio.create_task(server.serve(sockets=[sockets[name]]), name=name)
        for name, server in servers.items()
    ]

    def stop_all() -> None:
        for server in servers.values():
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_all)
    while not all(server.started for server in servers.values()):
        if any(task.done() for task in tasks):
            stop_all()
            await asyncio.gather(*tasks, return_exceptions=True)
            return
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port}/webhooks/erp-demo"
    body = example_order()
    token = settings.ops_token.get_secret_value() if settings.ops_token else ""
    written = dev_env.write(
        {
            "PONTE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "PONTE_DATABASE_URL": settings.database_url,
            "PONTE_KAFKA_IDEMPOTENCE": "false",
            "PONTE_KAFKA_REPLICATION_FACTOR": "1",
            "PONTE_OPS_TOKEN": token,
            # So `ponte sources load` / `ponte rekey-secrets` can seal and open this
            # stack's source secrets.
            "PONTE_SECRETS_KEY": settings.secrets_key.get_secret_value()
            if settings.secrets_key
            else "",
            "PONTE_DEV_INGEST_URL": f"http://127.0.0.1:{port}",
            "PONTE_DEV_TRANSFORM_URL": f"http://127.0.0.1:{ports['transform']}",
            "PONTE_DEV_OPS_URL": f"http://127.0.0.1:{ports['ops']}",
            "PONTE_DEV_SOURCES": ",".join(f"{sid}:{kind}" for sid, kind in kinds.items()),
            **{dev_env.secret_key(sid): secret for sid, secret in keys.items()},
        }
    )
    print("\nPonte is running.", flush=True)
    print(f"  webhooks:  {url}   (also /webhooks/shopify-demo, /webhooks/woo-demo)")
    print(f"  ingest:    http://127.0.0.1:{port}/docs  /metrics  /readyz")
    print(
        f"  transform: http://127.0.0.1:{ports['transform']}/docs  /parked-references  "
        "/rejections  /unmapped-fields  /classification  /metrics  (Bearer: the ops token)"
    )
    print(f"  ops page:  http://127.0.0.1:{ports['ops']}/   token: {token}  (API: /docs)")
    print(f"  broker:    {settings.kafka_bootstrap}   database: {settings.asyncpg_dsn}")
    print(f"  this stack's addresses, token and demo secrets: {written} (the CLI reads it)")
    print(
        "\nSend an order (the signature is valid for 5 minutes). A fresh one, for any demo\n"
        "source, is `.venv/bin/ponte sign erp-demo | sh` (or shopify-demo, woo-demo):\n"
    )
    print(signed_curl(url, keys["erp-demo"], body), "\n\nCtrl-C stops everything.\n", flush=True)
    tail = asyncio.create_task(_tail(settings))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        tail.cancel()
        stop_all()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await tail
        await asyncio.gather(*tasks, return_exceptions=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_dev(*, port: int = 8000, durable: bool = False) -> None:
    # Until the services run (they install their own handlers), SIGTERM behaves like
    # Ctrl-C, so the embedded broker and database are always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    base = Settings()
    configure_logging(base.log_level, console=True)
    if not _port_free(port):
        chosen = free_port()
        print(f"port {port} is taken; using {chosen}")
        port = chosen
    print(
        "starting embedded PostgreSQL and Kafka-protocol broker (Tansu) on loopback...", flush=True
    )
    with (
        tempfile.TemporaryDirectory(prefix="ponte-dev-") as workdir,
        embedded_stack(durable=durable) as (broker, database),
    ):
        sources_file = Path(workdir) / "sources.yaml"
        keys = write_demo_sources(sources_file)
        kinds = {sid: entry["kind"] for sid, entry in DEMO_SOURCES.items()}
        settings = base.model_copy(
            update={
                "kafka_bootstrap": broker.bootstrap,
                "database_url": database.url,
                "kafka_idempotence": False,  # Tansu cannot answer InitProducerId
                "kafka_replication_factor": 1,
                "sources_file": sources_file,
                # A fresh token per run unless one is configured: the page is on loopback.
                "ops_token": base.ops_token or SecretStr(secrets.token_urlsafe(24)),
                # Likewise the key that encrypts source secrets in the throwaway database.
                "secrets_key": base.secrets_key or SecretStr(generate_key()),
            }
        )
        db.migrate(settings)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_serve(settings, port, keys, kinds))
        finally:
            dev_env.remove()
    print("stopped: services, broker and database are down, their files removed.")
