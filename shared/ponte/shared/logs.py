"""Structured JSON logs. Fields passed with ``extra=`` become JSON keys (``event_id``,
``source``). Nothing here logs bodies, secrets or signatures; callers must not either,
and ``tests/ingest/test_webhooks.py`` greps the captured logs for the test secrets."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


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
