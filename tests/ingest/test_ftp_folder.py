"""FTP folder pulls against the real broker and PostgreSQL, the customer's FTP server being
a real FTP server (pyftpdlib) on loopback over a temporary folder.

What is checked is what lands: the raw topic's messages (table, key, payload), the
``pull_runs`` rows and the ledger of files taken in ``pull_cursors``."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from openpyxl import Workbook  # type: ignore[import-untyped]  # no stubs shipped
from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
from pyftpdlib.handlers import FTPHandler  # type: ignore[import-untyped]
from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped]

from ponte.ingest.publisher import EventPublisher
from ponte.ingest.pulls.runs import RunRecord
from ponte.ingest.pulls.scheduler import PullScheduler
from ponte.shared.embedded import free_port
from ponte.shared.pulls import FtpFolderPullDefinition, parse_definitions
from ponte.shared.settings import Settings
from tests.conftest import event_of, read_topic

pytestmark = pytest.mark.integration

FTP_USER = "erp-export"
FTP_PASSWORD = "ftp-senha-" + "c2VjcmV0YS1kby1mdHA"
OLD = time.time() - 3600  # files written an hour ago: settled

COMPANIES_CSV = (
    "codigo;razao_social;cnpj;email;ativo\r\n"
    "E10;Pão de Açúcar Comércio Ltda;11.222.333/0001-81;compras@pao.com.br;S\r\n"
    "E11;Padaria São João;;contato@saojoao.com.br;N\r\n"
    ";Sem Código Ltda;;;S\r\n"
).encode("latin-1")


@dataclass
class FtpStandIn:
    root: Path
    port: int

    def write(self, name: str, content: bytes, mtime: float = OLD) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (mtime, mtime))


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[FtpStandIn]:
    """A stand-in for the customer's FTP server (the seed's "pasta hospedada num servidor
    online via FTP"): a real FTP server on loopback, serving a temporary folder, run in a
    thread and stopped (every client disconnected) after the test."""
    root = tmp_path / "ftp"
    root.mkdir()
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmw")
    handler = type("StandInHandler", (FTPHandler,), {"authorizer": authorizer})
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, name="ftp-stand-in", daemon=True)
    thread.start()
    try:
        yield FtpStandIn(root, port)
    finally:
        stopping.set()
        thread.join(10)


def _definition(source_id: str, server: FtpStandIn, **ftp: Any) -> FtpFolderPullDefinition:
    entry = {
        "source_id": source_id,
        "kind": "ftp_folder",
        "schedule": {"every_minutes": 30},
        "ftp": {
            "host": "127.0.0.1",
            "port": server.port,
            "username": FTP_USER,
            "password": FTP_PASSWORD,
            "directory": "/",
            "table_from_name": r"^(?P<table>[A-Za-z]+)_",
            "settle_s": 0,
            "recheck_s": 0.2,
            "timeout_s": 5,
            **ftp,
        },
    }
    (definition,) = parse_definitions([entry])
    assert isinstance(definition, FtpFolderPullDefinition)
    return definition


async def _run_once(
    pool: asyncpg.Pool, publisher: EventPublisher, definition: FtpFolderPullDefinition
) -> RunRecord:
    scheduler = PullScheduler(pool, publisher, [definition], {})
    try:
        return await scheduler.run_now(definition.source_id, wait=True)
    finally:
        await scheduler.stop()


async def _ledger(pool: asyncpg.Pool, source_id: str) -> dict[str, Any]:
    cursor = await pool.fetchval("SELECT cursor FROM pull_cursors WHERE source_id = $1", source_id)
    ledger: dict[str, Any] = json.loads(cursor) if cursor else {}
    return ledger


def _contacts_xlsx() -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["codigo", "nome", "email"])
    sheet.append([501.0, "Maria Conceição", "maria@exemplo.com.br"])
    sheet.append(["C502", "João Ninguém", None])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


async def test_csv_and_xlsx_files_become_raw_events_with_their_table_and_key(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    ftp_server.write("Empresa_20241114.csv", COMPANIES_CSV)
    ftp_server.write("Contato_20241114.xlsx", _contacts_xlsx())
    ftp_server.write("leia-me.pdf", b"%PDF-1.4 not a pattern we take")
    definition = _definition(source_id, ftp_server, encoding="latin-1", delimiter=";")

    run = await _run_once(pool, publisher, definition)

    assert (run.status, run.error, run.pages, run.rows_pulled) == ("ok", None, 2, 4)
    assert run.rows_rejected == 1  # the CSV's row without its codigo
    assert run.rejected == [
        {
            "file": "Empresa_20241114.csv",
            "row": 4,
            "field": "codigo",
            "reason": "key field is empty",
        }
    ]
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=4)
    events = {(event_of(m)["topic"], event_of(m)["record_key"]): event_of(m) for m in messages}
    assert set(events) == {
        ("Empresa", "E10"),
        ("Empresa", "E11"),
        ("Contato", "501"),
        ("Contato", "C502"),
    }
    assert events[("Empresa", "E10")]["payload"]["razao_social"] == "Pão de Açúcar Comércio Ltda"
    assert events[("Contato", "501")]["payload"]["nome"] == "Maria Conceição"
    assert {m.key for m in messages} >= {f"{source_id}/Empresa/E10".encode()}
    # The data is as of when the ERP wrote the file, not when Ponte fetched it.
    assert events[("Empresa", "E10")]["occurred_at"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(OLD)))
    )
    ledger = await _ledger(pool, source_id)
    assert set(ledger) == {"Empresa_20241114.csv", "Contato_20241114.xlsx"}
    assert ledger["Empresa_20241114.csv"]["size"] == len(COMPANIES_CSV)
    assert ledger["Empresa_20241114.csv"]["rows"] == 2


async def test_a_second_run_takes_nothing_new_and_a_changed_file_is_taken_again(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    ftp_server.write("Empresa_1.csv", COMPANIES_CSV)
    definition = _definition(source_id, ftp_server)

    first = await _run_once(pool, publisher, definition)
    second = await _run_once(pool, publisher, definition)
    changed = COMPANIES_CSV + "E12;Loja Nova;;;S\r\n".encode("latin-1")
    ftp_server.write("Empresa_1.csv", changed, mtime=OLD + 60)
    third = await _run_once(pool, publisher, definition)

    assert (first.status, first.rows_pulled) == ("ok", 2)
    assert (second.status, second.pages, second.rows_pulled) == ("ok", 0, 0)
    assert (third.status, third.pages, third.rows_pulled) == ("ok", 1, 3)
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=5)
    assert sorted(event_of(m)["record_key"] for m in messages) == [
        "E10",
        "E10",
        "E11",
        "E11",
        "E12",
    ]
    assert (await _ledger(pool, source_id))["Empresa_1.csv"]["size"] == len(changed)


async def test_a_bad_file_is_reported_once_and_the_good_ones_still_go(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    ftp_server.write("Empresa_a.xlsx", b"PK\x03\x04 this is no workbook", mtime=OLD - 20)
    ftp_server.write("Tabelaquenaoexiste_b.csv", b"codigo;x\r\n1;2\r\n", mtime=OLD - 10)
    ftp_server.write("Empresa_c.csv", COMPANIES_CSV, mtime=OLD)
    definition = _definition(source_id, ftp_server)

    run = await _run_once(pool, publisher, definition)
    again = await _run_once(pool, publisher, definition)

    assert (run.status, run.pages, run.rows_pulled) == ("ok", 1, 2)
    assert run.error is not None and run.error.startswith("2 file(s) refused")
    assert "Empresa_a.xlsx: file is not an Excel workbook" in run.error
    assert "Tabelaquenaoexiste_b.csv: table 'Tabelaquenaoexiste' is not in the mapping" in run.error
    stored = await pool.fetchval("SELECT error FROM pull_runs WHERE id = $1", run.id)
    assert stored == run.error  # what the ops page shows
    ledger = await _ledger(pool, source_id)
    assert "not an Excel workbook" in ledger["Empresa_a.xlsx"]["error"]
    assert ledger["Empresa_c.csv"]["rows"] == 2
    # Not retried until it changes.
    assert (again.status, again.pages, again.error) == ("ok", 0, None)
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=2)
    assert sorted(event_of(m)["record_key"] for m in messages) == ["E10", "E11"]


async def test_a_file_over_the_size_limit_is_refused_before_download(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    big = COMPANIES_CSV + b"".join(b"E%d;Filler Ltda\r\n" % n for n in range(100, 400))
    ftp_server.write("Empresa_big.csv", big, mtime=OLD - 10)
    ftp_server.write("Empresa_small.csv", COMPANIES_CSV, mtime=OLD)
    definition = _definition(source_id, ftp_server, max_file_bytes=len(COMPANIES_CSV) + 1)

    run = await _run_once(pool, publisher, definition)

    assert (run.status, run.pages, run.rows_pulled) == ("ok", 1, 2)
    assert run.error is not None
    assert f"Empresa_big.csv: {len(big)} bytes, over max_file_bytes" in run.error
    ledger = await _ledger(pool, source_id)
    assert "over max_file_bytes" in ledger["Empresa_big.csv"]["error"]
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=2)
    assert sorted(event_of(m)["record_key"] for m in messages) == ["E10", "E11"]


async def test_a_rest_cursor_left_by_an_earlier_pull_becomes_an_empty_ledger(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    # The source was pulled over REST before: its cursor is a timestamp, not a ledger.
    await pool.execute(
        "INSERT INTO pull_cursors (source_id, cursor, run_id, updated_at) "
        "VALUES ($1, $2, 0, now())",
        source_id,
        "2024-11-14T12:00:00-03:00",
    )
    ftp_server.write("Empresa_1.csv", COMPANIES_CSV)

    run = await _run_once(pool, publisher, _definition(source_id, ftp_server))

    assert (run.status, run.pages, run.rows_pulled) == ("ok", 1, 2)
    assert set(await _ledger(pool, source_id)) == {"Empresa_1.csv"}


async def test_broker_down_leaves_the_file_untaken_and_the_next_run_takes_it(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    ftp_server.write("Empresa_1.csv", COMPANIES_CSV)
    definition = _definition(source_id, ftp_server)
    unreachable = EventPublisher(
        settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    )
    await unreachable.start()
    try:
        failed = await _run_once(pool, unreachable, definition)
    finally:
        await unreachable.stop()
    ledger_after_failure = await _ledger(pool, source_id)
    retried = await _run_once(pool, publisher, definition)

    assert failed.status == "failed"
    assert failed.error is not None and "Empresa_1.csv not acknowledged" in failed.error
    assert "Empresa_1.csv" not in ledger_after_failure
    assert (retried.status, retried.rows_pulled) == ("ok", 2)
    assert "Empresa_1.csv" in await _ledger(pool, source_id)
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=2)
    assert sorted(event_of(m)["record_key"] for m in messages) == ["E10", "E11"]


async def test_a_wrong_password_fails_the_run_naming_the_source_and_never_the_password(
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ftp_server.write("Empresa_1.csv", COMPANIES_CSV)
    wrong = "senha-errada-" + uuid.uuid4().hex
    definition = _definition(source_id, ftp_server, password=wrong)

    with caplog.at_level(logging.DEBUG):
        run = await _run_once(pool, publisher, definition)

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.startswith(f"source {source_id}: connect/login on ftp://{FTP_USER}@127.0.0.1:")
    assert "530" in run.error
    assert wrong not in run.error
    assert wrong not in repr(definition)
    finished = [r for r in caplog.records if r.getMessage() == "pull run finished"]
    assert finished and finished[0].__dict__["source"] == source_id
    for record in caplog.records:
        assert wrong not in record.getMessage()
        assert wrong not in repr(record.__dict__)
    assert await _ledger(pool, source_id) == {}


async def test_after_move_puts_taken_files_in_processed(
    settings: Settings,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    ftp_server.write("Empresa_1.csv", COMPANIES_CSV)
    definition = _definition(source_id, ftp_server, after="move")

    run = await _run_once(pool, publisher, definition)
    again = await _run_once(pool, publisher, definition)

    assert (run.status, run.rows_pulled, run.error) == ("ok", 2, None)
    assert not (ftp_server.root / "Empresa_1.csv").exists()
    assert (ftp_server.root / "processed" / "Empresa_1.csv").read_bytes() == COMPANIES_CSV
    assert (again.status, again.pages) == ("ok", 0)
    await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=2)


async def test_a_file_still_being_written_is_left_for_a_later_run(
    pool: asyncpg.Pool,
    publisher: EventPublisher,
    ftp_server: FtpStandIn,
    source_id: str,
) -> None:
    ftp_server.write("Empresa_1.csv", COMPANIES_CSV, mtime=time.time())
    definition = _definition(source_id, ftp_server, settle_s=600)

    run = await _run_once(pool, publisher, definition)

    assert (run.status, run.pages) == ("ok", 0)
    assert run.rejected == [
        {"file": "Empresa_1.csv", "reason": "still being written; left for a later run"}
    ]
    assert await _ledger(pool, source_id) == {}


def test_ftp_definitions_are_checked_and_name_the_field() -> None:
    base = {"source_id": "erp-a", "schedule": {"daily": "02:00"}}
    with pytest.raises(ValueError, match=r"pulls\[0\]\.ftp: .*exactly one of table"):
        parse_definitions([{**base, "kind": "ftp_folder", "ftp": {"host": "ftp.example"}}])
    with pytest.raises(ValueError, match=r"pulls\[0\]\.kind: 'sftp' is not rest or ftp_folder"):
        parse_definitions([{**base, "kind": "sftp"}])
    with pytest.raises(ValueError, match=r"pulls\[0\]\.ftp\.encoding: .*unknown encoding"):
        parse_definitions(
            [{**base, "kind": "ftp_folder", "ftp": {"host": "h", "table": "T", "encoding": "x"}}]
        )
    (definition,) = parse_definitions(
        [{**base, "kind": "ftp_folder", "ftp": {"host": "h", "table": "Pedido", "password": "p"}}]
    )
    assert isinstance(definition, FtpFolderPullDefinition)
    assert "'p'" not in repr(definition)
    assert definition.ftp.table_of("anything.csv") == "Pedido"
