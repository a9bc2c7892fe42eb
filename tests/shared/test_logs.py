"""Console lines and JSON logs with input-derived text (pure: no infrastructure)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pythonjsonlogger.json import JsonFormatter

from ponte.dev import tail_line
from ponte.shared.logs import ConsoleFormatter, configure_logging, printable


def test_printable_escapes_what_could_forge_or_rewrite_a_line() -> None:
    assert printable("Pedido\n[raw]    evt_forged") == "Pedido\\x0a[raw]    evt_forged"
    assert printable("a\rb\x1b[2Jc\x00d\x7f\u2028\u202e") == (
        "a\\x0db\\x1b[2Jc\\x00d\\x7f\\u2028\\u202e"
    )
    assert printable("Comércio São João") == "Comércio São João"


def test_a_table_name_with_a_newline_is_one_console_line() -> None:
    """Issue #20: a table name containing a newline forged a line on `make dev`."""
    event = {
        "event_id": "evt_1/0",
        "source_id": "erp-demo",
        "topic": "Pedido\n[raw]    evt_forged erp-demo Pedido upsert key=X",
        "operation": "upsert",
        "record_key": "K\r\x1b[1A",
    }
    line = tail_line(True, json.dumps(event).encode())
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.startswith("[raw]    evt_1/0 erp-demo Pedido\\x0a[raw]")
    change = {
        "entity": "order",
        "source_id": "erp-demo",
        "source_key": "A\nB",
        "operation": "upsert",
        "changed": ["x\ny"],
    }
    assert tail_line(False, json.dumps(change).encode()).count("\\x0a") == 2


def test_json_logs_keep_a_record_on_one_line() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO")
    formatter = root.handlers[0].formatter
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    assert isinstance(formatter, JsonFormatter)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("ponte.test_logs")
    logger.addHandler(handler)
    try:
        logger.warning("webhook rejected", extra={"table": "a\nb\u2028c", "source": "s\r"})
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["table"] == "a\nb\u2028c"


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "ponte.test", "levelname": "INFO", "levelno": 20, "msg": "sources\napplied"}
    )
    record.__dict__.update(extra)
    return record


def test_the_console_format_is_one_line_with_the_extra_fields() -> None:
    line = ConsoleFormatter().format(_record(source="erp-demo\n", color_message="\x1b[36mx"))
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith("INFO    ponte.test: sources\\x0aapplied source=erp-demo\\x0a")


def test_uvicorns_colour_copy_of_each_message_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO")
    try:
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 7, extra={"color_message": "\x1b[36m%d\x1b[0m"}
        )
    finally:
        configure_logging("WARNING")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "Started server process [7]"
    assert "color_message" not in json.loads(line)
