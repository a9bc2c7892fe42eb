"""``ponte``: one command line for every service and for local use.

    ponte dev        everything on this machine, on embedded defaults
    ponte ingest     the webhook service (production: env vars point at Kafka/PostgreSQL)
    ponte transform  raw events into the CRM model in PostgreSQL, change events out
    ponte deliver    change events out to CRM APIs (rate limits, retries, dead letters)
    ponte ops        the operations API and page (sources, history export, replay)
    ponte replay     put every stage's dead letters back after a fix (--dry-run by default)
    ponte reprocess  re-apply a source's current mapping to the raw events already received
    ponte migrate    bring the database schema up to date
    ponte topics     create the Kafka topics Ponte uses
    ponte sources    check a sources file, or load it into PostgreSQL
    ponte mapping check  run a source's mapping over sample deliveries, writing nothing
    ponte sign       print a signed curl for a sample delivery to any source
    ponte pull       run a source's scheduled pull now
    ponte classify   rank companies on the ABC curve now
    ponte secrets-key    print a new key for PONTE_SECRETS_KEY
    ponte rekey-secrets  re-encrypt stored source secrets under the first key

Commands that talk to a running stack read ``.ponte/dev.env`` when ``make dev`` wrote one
(``ponte.dev_env``). A broker or database they cannot reach is one line and exit 1;
``ponte --debug <command>`` shows the traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ponte.shared.logs import configure_logging
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind

if TYPE_CHECKING:
    from ponte.shared.mapping import Mapping
    from ponte.shared.secret_box import SecretBox

app = typer.Typer(
    help="Ponte keeps a CRM in step with an ERP and an online shop: signed webhooks in, "
    "Kafka in the middle, a relational CRM model in PostgreSQL, replayable delivery out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_debug = False


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the whole traceback when a command fails.")
    ] = False,
) -> None:
    global _debug
    _debug = debug


def cli_settings() -> Settings:
    """The settings a command that talks to a stack uses: the environment, then ``.env``,
    then the running ``make dev`` stack's ``.ponte/dev.env`` when there is one."""
    from ponte.dev_env import DEV_ENV

    return Settings(_env_file=(".env", DEV_ENV))


def _unreachable(error: BaseException) -> str | None:
    """One line naming what could not be reached and the setting that says where, for
    the failures a user meets when no stack is running; None for anything else."""
    from aiokafka.errors import KafkaError

    settings = cli_settings()
    if isinstance(error, KafkaError):
        return (
            f"cannot reach the Kafka broker at {settings.kafka_bootstrap} "
            f"({type(error).__name__}); start `make dev`, or set PONTE_KAFKA_BOOTSTRAP"
        )
    import socket

    import asyncpg

    connection_failures = (
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.InvalidPasswordError,
    )
    if isinstance(error, connection_failures):
        return (
            f"cannot reach PostgreSQL at {settings.asyncpg_dsn.split('@')[-1]} "
            f"({type(error).__name__}: {error}); start `make dev`, or set PONTE_DATABASE_URL"
        )
    return None


def main() -> None:
    """The ``ponte`` command: a failure to reach the broker or the database is one line
    and exit status 1, unless ``--debug`` asks for the traceback."""
    try:
        app()
    except Exception as error:
        cause: BaseException = error
        while cause.__cause__ is not None and _unreachable(cause) is None:
            cause = cause.__cause__
        message = None if _debug else _unreachable(cause)
        if message is None:
            raise
        typer.echo(f"ponte: {message}", err=True)
        raise SystemExit(1) from None


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

    Serves /healthz, /readyz, /metrics, /parked-references, /rejections,
    /unmapped-fields, /skipped-rows and POST /sources/{id}/mapping/check on the given
    port."""
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


ReplayStage = Literal["transform", "deliver", "status", "all"]


def _instant(name: str) -> Callable[[str], datetime]:
    """A typer parser: ISO 8601 text with an offset, or a clear refusal naming ``name``
    (a dead letter's time of failure is an instant; a time without an offset is not)."""

    def parse(text: str) -> datetime:
        if isinstance(text, datetime):  # a default, already parsed
            return text
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise typer.BadParameter(
                f"{name}: expected ISO 8601, such as 2024-11-14T12:00:00-03:00"
            ) from None
        if moment.tzinfo is None:
            raise typer.BadParameter(
                f"{name}: needs an offset (Z or -03:00), such as 2024-11-14T12:00:00-03:00"
            )
        return moment

    return parse


@app.command()
def replay(
    stage: Annotated[
        ReplayStage, typer.Option(help="Whose dead letters: transform, deliver, status or all.")
    ] = "all",
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    entity: Annotated[
        str | None,
        typer.Option(
            "--entity",
            "--table",
            help="Only this entity (deliver, status) or source table (transform).",
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Only this target's (deliver, status) dead letters.")
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Failed at or after (ISO 8601 with offset).",
            parser=_instant("--since"),
        ),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(
            help="Failed at or before (ISO 8601 with offset).",
            parser=_instant("--until"),
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Only reasons containing this text (any case).")
    ] = None,
    event_ids: Annotated[
        list[str] | None, typer.Option("--event-id", help="Event id (repeatable).")
    ] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Dead-letter key, e.g. src/company/E1 (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run/--send", help="Print what would be replayed (default).")
    ] = True,
) -> None:
    """Put dead letters back where their stage reads them, after a fix: a transform's
    raw event onto the raw topic, a deliver change onto the changes topic, a status-back
    event onto the status topic. Idempotent (each stage skips what it already has).
    Prints every selected dead letter, with why when one cannot be replayed."""
    from ponte.shared.replay.items import STAGES
    from ponte.shared.replay.run import replay as run_replay
    from ponte.shared.replay.selection import Selection

    settings = cli_settings()
    configure_logging(settings.log_level)
    selection = Selection(
        stages=STAGES if stage == "all" else (stage,),
        source_id=source,
        table=entity,
        target_id=target,
        since=since,
        until=until,
        reason=reason,
        event_ids=frozenset(event_ids or ()),
        keys=frozenset(ids or ()),
    )
    report = asyncio.run(run_replay(settings, selection, dry_run=dry_run))
    typer.echo("stage\tsource\ttable\tkey\ttarget\tevent_id\tfailed_at\treason")
    for item in report.items:
        fields = [item.stage, item.source, item.table, item.key, item.target, item.event_id]
        line = "\t".join([*fields, item.failed_at, item.reason])
        if item.not_replayable is not None:
            line += f"\tNOT REPLAYABLE: {item.not_replayable}"
        typer.echo(line)
    for name, count in report.counts().items():
        unreplayable = count.listed - count.replayable
        typer.echo(
            f"{name}: {count.listed} dead letter(s), {unreplayable} not replayable", err=True
        )
    verb = "would replay" if dry_run else "replayed"
    typer.echo(
        f"{verb} {report.replayable} dead letter(s) as {report.messages} message(s)", err=True
    )


@app.command()
def reprocess(
    source_id: Annotated[str, typer.Argument(help="The source whose events are re-applied.")],
    table: Annotated[
        str | None,
        typer.Option(help="Only this source table (a shop's resource, e.g. orders)."),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Only events published at or after (ISO 8601 with offset).",
            parser=_instant("--since"),
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read and decode only; write nothing.")
    ] = False,
    every: Annotated[float, typer.Option(help="Seconds between progress lines.", min=0.0)] = 5.0,
) -> None:
    """Re-apply the source's current mapping to the raw events already received (the raw
    topic, within its retention), through the live transform's own path: no duplicates,
    deletes kept, change events only for rows whose content changes; a newer event
    still wins, and live traffic goes on meanwhile. Deploy the fixed mapping to the
    transform first. Progress (messages done/total, rate, ETA) on stderr."""
    from ponte.transform.reprocess import ReprocessRefused, Selection
    from ponte.transform.reprocess import reprocess as run_reprocess

    settings = cli_settings()
    configure_logging(settings.log_level)
    selection = Selection(source_id=source_id, table=table, since=since)
    try:
        report = asyncio.run(
            run_reprocess(
                settings,
                selection,
                dry_run=dry_run,
                on_progress=lambda progress: typer.echo(progress.line(), err=True),
                progress_every_s=every,
            )
        )
    except ReprocessRefused as refused:
        typer.echo(f"ponte reprocess: {refused}", err=True)
        raise typer.Exit(1) from None
    for name, count in sorted(report.by_table.items()):
        typer.echo(f"{name}\t{count}")
    typer.echo(report.summary(), err=True)


@app.command()
def classify(
    dry_run: Annotated[
        bool, typer.Option("--dry-run/--write", help="Only print the counts (default).")
    ] = True,
) -> None:
    """Rank companies on the ABC curve and file them in portfolios now
    (PONTE_CLASSIFICATION_FILE); the transform service also does it on schedule."""
    from ponte.transform.classification import classify_companies

    settings = cli_settings()
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

    settings = cli_settings()
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
def migrate(
    revision: Annotated[
        str, typer.Argument(help="Target revision of Ponte's own tables.")
    ] = "heads",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what the CRM model needs; change nothing.")
    ] = False,
) -> None:
    """Bring PostgreSQL up to date (PONTE_DATABASE_URL): Ponte's own tables, then the CRM
    tables to the model (the shipped one extended by PONTE_MODEL_FILE), additively: a
    change that would lose data is refused, naming the entity and column, and nothing of
    the model's half is applied (Ponte's own tables are migrated first, each Alembic
    revision in its transaction). --dry-run plans the model's half only, against the
    tables as they are (run it after Ponte's own migrations are at head)."""
    import asyncio

    from sqlalchemy.exc import DBAPIError

    from ponte.shared.crm_model import crm_model
    from ponte.shared.crm_schema import SchemaFailed, SchemaRefused, apply_model
    from ponte.shared.db import migrate as run_migrations

    settings = cli_settings()
    configure_logging(settings.log_level)
    try:
        model = crm_model()
        if dry_run:
            planned = asyncio.run(apply_model(settings.database_url, model, dry_run=True))
            for line in planned.applied or ["nothing to change"]:
                typer.echo(f"would {line}" if planned.applied else line)
            return
        applied = run_migrations(settings, revision)
    except (SchemaRefused, SchemaFailed, ValueError, DBAPIError) as error:
        typer.echo(f"ponte migrate: {error}", err=True)
        raise typer.Exit(1) from None
    for line in applied:
        typer.echo(line)
    typer.echo(f"schema at {revision}, CRM model {model.digest} ({', '.join(model.files)})")


@app.command()
def topics() -> None:
    """Create the Kafka topics Ponte uses that do not exist yet (PONTE_KAFKA_BOOTSTRAP)."""
    from ponte.shared.kafka import ensure_topics
    from ponte.shared.kafka import topics as topic_specs

    settings = cli_settings()
    configure_logging(settings.log_level)
    asyncio.run(ensure_topics(settings))
    for spec in topic_specs(settings):
        typer.echo(f"{spec.name}\tpartitions={spec.partitions}\tretention_ms={spec.retention_ms}")


sources_app = typer.Typer(
    help="Check or load a sources file (PONTE_SOURCES_FILE's format).", no_args_is_help=True
)
app.add_typer(sources_app, name="sources")
SourcesPath = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Sources YAML.")]


def _read_sources(path: Path) -> list[Any]:
    from ponte.shared.sources import load_sources_file

    try:
        return load_sources_file(path)
    except ValueError as error:
        typer.echo(f"invalid sources file: {error}", err=True)
        raise typer.Exit(1) from None


@sources_app.command("check")
def sources_check(path: SourcesPath) -> None:
    """Validate a sources file and list its sources; stores nothing."""
    for config in _read_sources(path):
        typer.echo(f"{config.id}\t{config.kind.value}\tactive={config.active}")


@sources_app.command("load")
def sources_load(path: SourcesPath) -> None:
    """Validate a sources file and store it in PostgreSQL (changed entries only)."""
    from ponte.shared import db
    from ponte.shared.sources import apply_sources

    configs = _read_sources(path)

    settings = cli_settings()
    box = _secret_box(settings)

    async def store() -> dict[str, str]:
        pool = await db.create_pool(settings)
        try:
            return await apply_sources(pool, configs, box)
        finally:
            await pool.close()

    for source_id, outcome in asyncio.run(store()).items():
        typer.echo(f"{source_id}\t{outcome}")


mapping_app = typer.Typer(
    help="Try a source's mapping on sample deliveries (nothing is written).",
    no_args_is_help=True,
)
app.add_typer(mapping_app, name="mapping")


@mapping_app.command("check")
def mapping_check(
    source_id: Annotated[str, typer.Argument(help="The source whose mapping runs.")],
    sample: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="JSON: one delivery as posted to ingest, a list of them, or JSON lines "
            "(a shop's as {topic, body}; Ponte raw events too).",
        ),
    ],
    kind: Annotated[
        SourceKind | None,
        typer.Option(help="The source's kind (default: its row in PostgreSQL's sources)."),
    ] = None,
    mapping_file: Annotated[
        Path | None,
        typer.Option(
            "--mapping", exists=True, dir_okay=False, help="Try this mapping file instead."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="Where to look the source and references up (PONTE_DATABASE_URL)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Run a source's mapping (resolved as the transform resolves it) over sample
    deliveries and print, per table, what would be written, refused (field and reason),
    skipped by filters, left unmapped (in extra) and which references would park.
    Writes nothing. Exit 0 when everything maps, 1 when something would be refused (or
    the mapping is invalid), 2 when the command's input is (no kind, unreadable sample)."""
    from ponte.transform.dry_run import (
        DryRunReport,
        SampleError,
        check,
        check_references,
        parse_samples,
        render,
    )

    settings = cli_settings()
    if database_url is not None:
        settings = settings.model_copy(update={"database_url": database_url})
    where = settings.asyncpg_dsn.split("@")[-1]  # never the password

    async def run() -> DryRunReport:
        connection = await _read_only_connection(settings)
        try:
            chosen = kind or await _stored_kind(connection, source_id, where)
            mapping, origin = _mapping_to_try(chosen, source_id, mapping_file, settings)
            try:
                events = parse_samples(sample.read_bytes(), chosen, source_id, mapping)
            except SampleError as error:
                typer.echo(f"invalid sample {sample}: {error}", err=True)
                raise typer.Exit(2) from None
            report = check(events, mapping, source_id=source_id, kind=chosen.value, origin=origin)
            if connection is not None:
                await check_references(connection, report)
            return report
        finally:
            if connection is not None:
                await connection.close()

    report = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(report.as_json(), ensure_ascii=False, indent=2, default=str))
    else:
        typer.echo(render(report))
        if not report.references_checked:
            typer.echo(f"references not checked: no database at {where}", err=True)
    if not report.ok:
        raise typer.Exit(1)


async def _read_only_connection(settings: Settings) -> Any:
    """A connection in a read-only session, or None when the database cannot be reached
    (the check then runs without it and says so)."""
    import asyncpg

    try:
        connection = await asyncpg.connect(settings.asyncpg_dsn, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    await connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    return connection


async def _stored_kind(connection: Any, source_id: str, where: str) -> SourceKind:
    if connection is None:
        typer.echo(f"cannot reach PostgreSQL at {where} to read {source_id!r}'s kind; "
                   "pass --kind (erp, shopify, woocommerce)", err=True)  # fmt: skip
        raise typer.Exit(2)
    stored = await connection.fetchval("SELECT kind FROM sources WHERE id = $1", source_id)
    if stored is None:
        typer.echo(f"no source {source_id!r} in PostgreSQL at {where}; pass --kind", err=True)
        raise typer.Exit(2)
    return SourceKind(stored)


def _mapping_to_try(
    kind: SourceKind, source_id: str, path: Path | None, settings: Settings
) -> tuple[Mapping, str]:
    """The mapping the transform would use (or ``--mapping``), and where it comes from;
    an invalid one is exit 1 naming the table and field."""
    from ponte.shared.mapping import load_mapping, mapping_for, mapping_origin

    try:
        if path is not None:
            return load_mapping(path), str(path)
        return (
            mapping_for(kind, source_id, settings.mappings_dir),
            mapping_origin(kind, source_id, settings.mappings_dir),
        )
    except ValueError as error:
        typer.echo(f"invalid mapping: {error}", err=True)
        raise typer.Exit(1) from None


def _secret_box(settings: Settings) -> SecretBox:
    """The box of PONTE_SECRETS_KEY, or exit 1 saying how to set it."""
    from ponte.shared.secret_box import SecretBox, SecretsKeyMissing

    try:
        return SecretBox.from_settings(settings)
    except (SecretsKeyMissing, ValueError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None


@app.command("secrets-key")
def secrets_key() -> None:
    """Print a new key for PONTE_SECRETS_KEY (to start, or to rotate: put it first)."""
    from ponte.shared.secret_box import generate_key

    typer.echo(generate_key())


@app.command("rekey-secrets")
def rekey_secrets() -> None:
    """Re-encrypt every stored source secret under the first key of PONTE_SECRETS_KEY
    (rotation: new key first, this, then drop the old key)."""
    from ponte.shared import db
    from ponte.shared.sources import reseal_sources

    settings = cli_settings()
    configure_logging(settings.log_level)
    box = _secret_box(settings)

    async def rekey() -> int:
        pool = await db.create_pool(settings)
        try:
            return await reseal_sources(pool, box)
        finally:
            await pool.close()

    typer.echo(f"{asyncio.run(rekey())} sources re-encrypted under the first key")


@app.command()
def sign(
    source: Annotated[
        str | None,
        typer.Argument(help="The source to sign for (default with --url: an ERP source)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="The webhook URL (default: the make dev stack's).")
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(envvar="PONTE_SIGN_SECRET", help="The source's secret (default: make dev's)."),
    ] = None,
    kind: Annotated[
        SourceKind | None, typer.Option(help="The source's kind (default: make dev's, or erp).")
    ] = None,
    body_file: Annotated[
        Path | None,
        typer.Option("--body", exists=True, dir_okay=False, help="JSON body (default: a sample)."),
    ] = None,
    repeat_id: Annotated[
        str | None,
        typer.Option(help="Send under this delivery id (to see a re-send answered duplicate)."),
    ] = None,
    send: Annotated[
        bool, typer.Option("--send", help="Send it now and print the answer, not the curl.")
    ] = False,
) -> None:
    """Print a signed curl for a source (pipe it to `sh`, or use --send): an ERP order, a
    Shopify or a WooCommerce order, each a fresh delivery unless --repeat-id is given."""
    from ponte import dev_env
    from ponte.shared.sample_requests import sample_request

    stack = dev_env.read()
    demo = dict(
        item.split(":", 1) for item in stack.get("PONTE_DEV_SOURCES", "").split(",") if item
    )
    if source is None and url is None:
        typer.echo("name a source (e.g. `ponte sign erp-demo`) or give --url", err=True)
        raise typer.Exit(2)
    if url is None:
        base = stack.get("PONTE_DEV_INGEST_URL")
        if base is None:
            typer.echo(f"no --url, and no running make dev stack ({dev_env.DEV_ENV})", err=True)
            raise typer.Exit(2)
        url = f"{base}/webhooks/{source}"
    secret = secret or (stack.get(dev_env.secret_key(source)) if source else None)
    if not secret:
        typer.echo(f"no --secret for {source or url}, and make dev has none for it", err=True)
        raise typer.Exit(2)
    chosen = SourceKind(kind.value if kind else demo.get(source or "", "erp"))
    body = body_file.read_bytes() if body_file else None
    request = sample_request(chosen, url, secret, body=body, delivery_id=repeat_id)
    if not send:
        typer.echo(request.curl())
        return
    import httpx

    try:
        answer = httpx.post(request.url, content=request.body, headers=request.headers, timeout=15)
    except httpx.TransportError as error:
        typer.echo(f"ponte: cannot reach {request.url} ({type(error).__name__})", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{answer.status_code} {answer.text}")
    if not answer.is_success:
        raise typer.Exit(1)


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
    main()
