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


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
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
