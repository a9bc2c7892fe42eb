"""Structured JSON logs. Fields passed with ``extra=`` become JSON keys (``event_id``,
``source``). Nothing here logs bodies, secrets or signatures; callers must not either,
and ``tests/ingest/test_webhooks.py`` greps the captured logs for the test secrets."""

from __future__ import annotations

import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 controls, DEL, Unicode line separators and bidirectional overrides: what
can end, rewrite or reorder a line on a terminal."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``value`` as text safe for one console line: control characters escaped
    (``\\n`` becomes the four characters ``\\x0a``). Anything derived from input (table
    names, keys, ids) goes through this before a plain-text print. The JSON logs need
    no such step: JSON escapes every control character itself (``test_logs.py``)."""
    text = str(value)
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class _DropColour(logging.Filter):
    """uvicorn attaches ``color_message`` (its message with terminal colour codes) to
    its records: a second copy of the message, escape codes included, in every line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


class ConsoleFormatter(logging.Formatter):
    """One readable line per event for a person at a terminal (``ponte dev``): time,
    level, logger, message, then the ``extra=`` fields as ``key=value``, every part
    escaped with ``printable`` so nothing from input can start a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={printable(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        line = (
            f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: "
            f"{printable(record.getMessage())}"
        )
        if record.exc_info:
            line += " " + printable(self.formatException(record.exc_info))
        return f"{line} {extras}" if extras else line


def configure_logging(level: str = "INFO", *, console: bool = False) -> None:
    """JSON lines on stderr (for log collectors), or with ``console`` plain lines for a
    person (``ponte dev``), which also leaves out the start-up chatter of the three
    servers and the migrations: ``ponte dev`` prints where everything is itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_DropColour())
    if console:
        handler.setFormatter(ConsoleFormatter())
    else:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every failed reconnect at ERROR; ours already say what matters.
    logging.getLogger("aiokafka").setLevel(
        logging.CRITICAL if level.upper() != "DEBUG" else logging.DEBUG
    )
    if console and level.upper() != "DEBUG":
        for chatty in ("uvicorn.error", "uvicorn.access", "alembic"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
