"""``ponte``: one command line for every service and for local use.

    ponte dev        everything on this machine, on embedded defaults
    ponte ingest     the webhook service (production: env vars point at Kafka/PostgreSQL)
    ponte transform  raw events into the CRM model in PostgreSQL, change events out
    ponte deliver    change events out to CRM APIs (rate limits, retries, dead letters)
    ponte ops        the operations API and page (sources, history export, replay)
    ponte replay     re-deliver dead letters after a fix (--dry-run by default)
    ponte migrate    bring the database schema up to date
    ponte topics     create the Kafka topics Ponte uses
    ponte sources    validate a sources file and store it in PostgreSQL
    ponte sign       print a signed curl for a test delivery to an ERP source
    ponte pull       run a source's scheduled pull now

``ponte deliver`` covers HubSpot so far (issue #5 lists the other connectors).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from ponte.shared.logs import configure_logging
from ponte.shared.settings import Settings

app = typer.Typer(
    help="Ponte keeps a CRM in step with an ERP and an online shop: signed webhooks in, "
    "Kafka in the middle, a relational CRM model in PostgreSQL, replayable delivery out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


Host = Annotated[str | None, typer.Option(help="Address to listen on (PONTE_HTTP_HOST).")]
Port = Annotated[int | None, typer.Option(help="Port to listen on (PONTE_HTTP_PORT).")]


def _serve(service: str, host: str | None, port: int | None) -> None:
    from ponte.shared.http import PonteServer, server_config

    settings = Settings()
    configure_logging(settings.log_level)
    if service == "ingest":
        from ponte.ingest.app import create_app
    elif service == "transform":
        from ponte.transform.app import create_app
    elif service == "ops":
        from ponte.ops.app import create_app
    else:
        from ponte.deliver.app import create_app
    config = server_config(
        create_app(settings), host=host or settings.http_host, port=port or settings.http_port
    )
    PonteServer(config, drain_s=settings.shutdown_drain_s).run()


@app.command()
def ingest(host: Host = None, port: Port = None) -> None:
    """Run the ingest service: POST /webhooks/{source_id} into the raw Kafka topic."""
    _serve("ingest", host, port)


@app.command()
def transform(host: Host = None, port: Port = None) -> None:
    """Run the transform service: raw topic into the CRM model, change events out.

    Serves /healthz, /readyz, /metrics, /parked-references, /rejections and
    /unmapped-fields on the given port."""
    _serve("transform", host, port)


@app.command()
def deliver(host: Host = None, port: Port = None) -> None:
    """Run the deliver service: change events out to the CRM targets (PONTE_TARGETS_FILE).

    Serves /healthz, /readyz, /metrics and /deliveries on the given port."""
    _serve("deliver", host, port)


@app.command()
def ops(host: Host = None, port: Port = None) -> None:
    """Run the ops service: the operations API (/ops/..., PONTE_OPS_TOKEN) and page (/).

    Serves /healthz, /readyz and /metrics too; OpenAPI at /docs."""
    _serve("ops", host, port)


@app.command()
def replay(
    target: Annotated[str | None, typer.Option(help="Only this target's dead letters.")] = None,
    entity: Annotated[
        str | None, typer.Option(help="Only this entity (company, order...).")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Failed at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Failed at or before (ISO 8601).")] = None,
    ids: Annotated[list[str] | None, typer.Option("--id", help="External id (repeatable).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run/--send", help="Print what would be replayed (default).")
    ] = True,
) -> None:
    """Re-deliver dead-lettered changes after a fix (idempotent: delivered versions are
    skipped). Prints what is (or would be) replayed."""
    from ponte.shared.replay import replay as run_replay

    settings = Settings()
    configure_logging(settings.log_level)
    replayed = asyncio.run(
        run_replay(
            settings,
            target_id=target,
            entity=entity,
            source_id=source,
            since=since,
            until=until,
            external_ids=set(ids) if ids else None,
            dry_run=dry_run,
        )
    )
    for item in replayed:
        typer.echo(f"{item.target}\t{item.external_id}\t{item.failed_at}\t{item.reason}")
    verb = "would replay" if dry_run else "replayed"
    typer.echo(f"{verb} {len(replayed)} change(s)", err=True)


@app.command()
def classify(
    dry_run: Annotated[
        bool, typer.Option("--dry-run/--write", help="Only print the counts (default).")
    ] = True,
) -> None:
    """Rank companies on the ABC curve and file them in portfolios now
    (PONTE_CLASSIFICATION_FILE); the transform service also does it on schedule."""
    from ponte.transform.classification import classify_companies

    settings = Settings()
    configure_logging(settings.log_level)
    counts = asyncio.run(classify_companies(settings, dry_run=dry_run))
    for abc_class, count in counts.items():
        typer.echo(f"{abc_class}\t{count}")
    typer.echo("computed, nothing written" if dry_run else "written", err=True)


@app.command()
def pull(
    source_id: Annotated[str, typer.Argument(help="The ERP source whose pull runs now.")],
) -> None:
    """Run a source's scheduled pull now (PONTE_PULLS_FILE), under the same lock as the
    ingest replicas; prints the run and exits 1 if it failed, 2 if one was already going."""
    from ponte.ingest.pulls.scheduler import UnknownPull, pull_once

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        run = asyncio.run(pull_once(settings, source_id))
    except UnknownPull:
        typer.echo(f"no pull is defined for source {source_id!r}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(run.public(), ensure_ascii=False, indent=2))
    if run.status != "ok":
        raise typer.Exit(2 if run.status == "skipped_locked" else 1)


@app.command()
def migrate(revision: Annotated[str, typer.Argument(help="Target revision.")] = "heads") -> None:
    """Bring the PostgreSQL schema up to date (PONTE_DATABASE_URL)."""
    from ponte.shared.db import migrate as run_migrations

    settings = Settings()
    configure_logging(settings.log_level)
    run_migrations(settings, revision)
    typer.echo(f"schema at {revision}")


@app.command()
def topics() -> None:
    """Create the Kafka topics Ponte uses that do not exist yet (PONTE_KAFKA_BOOTSTRAP)."""
    from ponte.shared.kafka import ensure_topics
    from ponte.shared.kafka import topics as topic_specs

    settings = Settings()
    configure_logging(settings.log_level)
    asyncio.run(ensure_topics(settings))
    for spec in topic_specs(settings):
        typer.echo(f"{spec.name}\tpartitions={spec.partitions}\tretention_ms={spec.retention_ms}")


@app.command()
def sources(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Sources YAML.")],
    check: Annotated[bool, typer.Option("--check", help="Only validate; store nothing.")] = False,
) -> None:
    """Validate a sources file and store it in PostgreSQL (changed entries only)."""
    from ponte.shared import db
    from ponte.shared.sources import apply_sources, load_sources_file

    try:
        configs = load_sources_file(path)
    except ValueError as error:
        typer.echo(f"invalid sources file: {error}", err=True)
        raise typer.Exit(1) from None
    if check:
        for config in configs:
            typer.echo(f"{config.id}\t{config.kind.value}\tactive={config.active}")
        return

    async def store() -> dict[str, str]:
        pool = await db.create_pool(Settings())
        try:
            return await apply_sources(pool, configs)
        finally:
            await pool.close()

    for source_id, outcome in asyncio.run(store()).items():
        typer.echo(f"{source_id}\t{outcome}")


@app.command()
def sign(
    url: Annotated[str, typer.Option(help="The source's webhook URL.")],
    secret: Annotated[str, typer.Option(envvar="PONTE_SIGN_SECRET", help="The source's secret.")],
    body_file: Annotated[
        Path | None,
        typer.Option(
            "--body", exists=True, dir_okay=False, help="JSON body; default: an example order."
        ),
    ] = None,
) -> None:
    """Print a signed curl for an ERP source (Standard Webhooks headers)."""
    from ponte.shared.sample_requests import example_order, signed_curl

    body = body_file.read_bytes() if body_file else example_order()
    typer.echo(signed_curl(url, secret, body))


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port for the ingest service.")] = 8000,
    durable: Annotated[
        bool, typer.Option(help="Keep broker data across broker restarts (local S3 stand-in).")
    ] = False,
) -> None:
    """Run Ponte on this machine, on embedded PostgreSQL and broker. Ctrl-C stops all.

    Starts PostgreSQL and a Kafka-protocol broker (Tansu) on loopback, creates the schema
    and topics, starts the services and prints a signed curl to try."""
    from ponte.dev import run_dev

    run_dev(port=port, durable=durable)


if __name__ == "__main__":
    app()
