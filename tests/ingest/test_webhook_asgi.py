"""The plain ASGI handler that serves ``POST /webhooks/{source_id}``, at its edges.

The happy paths and every rejection run over real HTTP in test_webhooks.py. What cannot be
provoked from outside, an unexpected error inside intake and a sender hanging up mid-body,
is driven here through the ASGI interface itself, with an intake that fails on purpose."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, cast

import orjson
import pytest
from starlette.datastructures import Headers

from ponte.ingest.intake import Answer, IncomingRequest, Intake
from ponte.ingest.routes.webhooks import _read_headers, serve_webhook, webhook_source


class ReadingIntake:
    """Reads the whole body as Intake does, then answers or fails."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.bodies: list[bytes] = []

    async def handle(self, request: IncomingRequest) -> Answer:
        body = b"".join([chunk async for chunk in request.body_chunks])
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        return Answer(
            503, {"error": "broker_unavailable", "peer": request.peer}, {"Retry-After": "5"}
        )


def scope(path: str = "/webhooks/erp-1", method: str = "POST") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
    }


async def drive(
    intake: ReadingIntake, messages: list[dict[str, Any]]
) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await serve_webhook(cast(Intake, intake), "erp-1", scope(), receive, send)
    return sent


def test_only_posts_to_one_source_path_take_the_fast_path() -> None:
    assert webhook_source(scope()) == "erp-1"
    assert webhook_source(scope(method="GET")) is None
    assert webhook_source(scope("/webhooks/erp-1/extra")) is None
    assert webhook_source(scope("/webhooks/")) is None
    assert webhook_source({"type": "lifespan"}) is None


async def test_answer_status_headers_and_body_in_chunks() -> None:
    intake = ReadingIntake()
    sent = await drive(
        intake,
        [
            {"type": "http.request", "body": b'{"a":', "more_body": True},
            {"type": "http.request", "body": b"1}", "more_body": False},
        ],
    )
    assert intake.bodies == [b'{"a":1}']
    start, body = sent
    assert start["status"] == 503
    assert (b"retry-after", b"5") in start["headers"]
    assert (b"content-type", b"application/json") in start["headers"]
    assert body["body"] == b'{"error":"broker_unavailable","peer":"127.0.0.1"}'
    assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]


async def test_unexpected_error_is_a_500_and_reraised_for_the_server_log() -> None:
    intake = ReadingIntake(RuntimeError("bug"))
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="bug"):
        await serve_webhook(cast(Intake, intake), "erp-1", scope(), receive, send)
    assert sent[0]["status"] == 500
    assert orjson.loads(sent[1]["body"])["error"] == "internal_error"
    assert (b"content-type", b"application/json") in sent[0]["headers"]


async def test_sender_hanging_up_mid_body_gets_no_answer() -> None:
    intake = ReadingIntake()
    sent = await drive(
        intake,
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}],
    )
    assert sent == [] and intake.bodies == []


def test_headers_read_as_starlette_reads_them() -> None:
    """Repeated headers answer their first line, and every X-Forwarded-For line is kept
    in order, as through Starlette's ``Headers``; non-ASCII bytes decode as Latin-1."""
    raw = [
        (b"content-type", b"application/json"),
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"webhook-id", b"msg_1"),
        (b"x-forwarded-for", b"10.0.0.2, 10.0.0.3"),
        (b"webhook-id", b"msg_2"),
        (b"x-note", "João".encode("latin-1")),
    ]
    headers, forwarded = _read_headers(raw)
    starlette = Headers(raw=raw)
    for name in ("content-type", "webhook-id", "x-forwarded-for", "x-note", "absent"):
        assert headers.get(name) == starlette.get(name)
    assert forwarded == starlette.getlist("x-forwarded-for")


def test_path_match_is_remembered_per_path() -> None:
    assert webhook_source(scope("/webhooks/erp-2")) == "erp-2"
    assert webhook_source(scope("/webhooks/erp-2")) == "erp-2"
    assert webhook_source(scope("/webhooks/erp-2/x")) is None
    assert webhook_source(scope("/webhooks/erp-2/x")) is None
    mounted = {**scope("/api/webhooks/erp-3"), "root_path": "/api"}
    assert webhook_source(mounted) == "erp-3"
