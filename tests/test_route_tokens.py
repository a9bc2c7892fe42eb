"""Every route of every service, asked without a token, gives nothing away.

Each app runs with its real lifespan (the session's broker and PostgreSQL). Every
operation in its OpenAPI document is called with no ``Authorization`` header and must
answer 401, except the probes and metrics (no data) and the webhooks, which are
authenticated per source by their signature (tests/ingest, tests/deliver/test_status_back.py
check those). The ops page's HTML routes, outside the document, must send the browser to
the login form.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from ponte.shared.kafka import ensure_topics
from ponte.shared.settings import Settings
from tests.conftest import app_factory, write_sources

pytestmark = pytest.mark.integration

OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
"""Probes and metrics: no stored data, and Kubernetes calls them without a token."""
SIGNED = {("POST", "/webhooks/{source_id}"), ("POST", "/crm-webhooks/hubspot/{target_id}")}
"""Authenticated by the sender's signature, per source or CRM target."""
TOKEN = "route-token-test-0123456789abcdefghij"


def operations(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, methods in app.openapi()["paths"].items()
        for method in methods
    ]


@pytest.mark.parametrize("service", ["ingest", "transform", "deliver", "ops"])
async def test_every_route_without_a_token_answers_401(
    settings: Settings, tmp_path: Path, service: str
) -> None:
    sources = write_sources(
        tmp_path / "sources.yaml", [{"id": "erp-tok", "kind": "erp", "secrets": ["s3cret-tok"]}]
    )
    configured = settings.model_copy(
        update={"ops_token": SecretStr(TOKEN), "sources_file": sources, "pulls_file": None}
    )
    await ensure_topics(configured)
    app = app_factory(service)(configured)
    checked: list[tuple[str, str, int]] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client,
    ):
        for method, path in operations(app):
            if (method, path) in OPEN | SIGNED:
                continue
            url = re.sub(r"\{[^}]+\}", "erp-tok", path)
            answer = await client.request(method, url, json={} if method != "GET" else None)
            checked.append((method, path, answer.status_code))
        pages = (
            [await client.get(url) for url in ("/", "/sources/erp-tok")] if service == "ops" else []
        )
    refused = [(m, p) for m, p, status in checked if status == 401]
    assert refused == [(m, p) for m, p, _ in checked], checked
    assert checked, f"{service} has no guarded route: the document lost them"
    for page in pages:
        assert page.status_code == 303 and page.headers["location"] == "/login"


async def test_a_service_without_a_configured_token_refuses_too(
    base_settings: Settings, pool: Any
) -> None:
    """A deployment that forgot ``PONTE_OPS_TOKEN`` exposes nothing: no token matches."""
    app = app_factory("transform")(base_settings.model_copy(update={"ops_token": None}))
    app.state.pool = pool
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://p"
    ) as client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
            answer = await client.get("/rejections", headers=headers)
            assert answer.status_code == 401, answer.text
