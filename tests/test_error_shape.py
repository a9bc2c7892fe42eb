"""Every service answers every error in one shape (``ponte.shared.problems.Problem``):
``{"error", "message", "field"?, "problems"?}``, and its OpenAPI document says so.

Each app runs with its real lifespan (the session's broker and PostgreSQL) and is asked
for the same few errors: a path nothing serves (404), a method the path does not serve
(405), an invalid query parameter (422) and a guarded route without the token (401).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ponte.shared.kafka import ensure_topics
from ponte.shared.problems import Problem
from ponte.shared.settings import Settings
from tests.conftest import app_factory, write_sources

pytestmark = pytest.mark.integration

TOKEN = "error-shape-test-0123456789abcdefghij"
GUARDED = {
    "ingest": "/pulls/erp-shape",
    "transform": "/rejections",
    "deliver": "/deliveries",
    "ops": "/ops/audit",
}
"""Per service, a GET route that takes the token and a ``limit`` query parameter (1+)."""
KEYS = {"error", "message", "field", "problems"}
CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def problem_of(answer: httpx.Response) -> dict[str, Any]:
    """The body, checked against the one shape: only its keys, a stable code, a message."""
    assert answer.headers["content-type"].startswith("application/json"), answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) <= KEYS, body
    assert CODE.match(body["error"]) and body["message"], body
    Problem.model_validate(body)
    return body


async def test_every_service_answers_errors_in_one_shape(
    settings: Settings, tmp_path: Path
) -> None:
    sources = write_sources(
        tmp_path / "sources.yaml", [{"id": "erp-shape", "kind": "erp", "secrets": ["s3cret-s"]}]
    )
    configured = settings.model_copy(
        update={"ops_token": SecretStr(TOKEN), "sources_file": sources, "pulls_file": None}
    )
    await ensure_topics(configured)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    seen: dict[str, dict[str, dict[str, Any]]] = {}
    for service, guarded in GUARDED.items():
        app = app_factory(service)(configured)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c,
        ):
            missing = await c.get("/no/such/path", headers=bearer)
            method = await c.post("/healthz", headers=bearer)
            invalid = await c.get(f"{guarded}?limit=0", headers=bearer)
            no_token = await c.get(guarded)
            document = (await c.get("/openapi.json")).json()
        assert missing.status_code == 404, (service, missing.text)
        assert method.status_code == 405 and "GET" in method.headers["allow"], service
        assert invalid.status_code == 422, (service, invalid.text)
        assert no_token.status_code == 401, (service, no_token.text)
        assert no_token.headers["www-authenticate"] == "Bearer", service
        seen[service] = {
            name: problem_of(answer)
            for name, answer in {
                "404": missing,
                "405": method,
                "422": invalid,
                "401": no_token,
            }.items()
        }
        # The document declares the shape for every error response it lists.
        template = guarded.replace("erp-shape", "{source_id}")
        operation = document["paths"][template]["get"]["responses"]
        for status in ("401", "422"):
            schema = operation[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (service, status)
        assert "HTTPValidationError" not in document["components"]["schemas"], service
    for service, answers in seen.items():
        assert answers["404"]["error"] == "not_found", service
        assert answers["405"]["error"] == "method_not_allowed", service
        assert answers["422"]["error"] == "invalid_request", service
        assert answers["422"]["field"] == "query.limit", service
        (problem,) = answers["422"]["problems"]
        assert problem["field"] == "query.limit" and problem["type"] == "greater_than_equal"
        assert "0" not in answers["422"]["message"], answers["422"]  # never the input
        assert answers["401"]["field"] == "authorization", service
    assert len({tuple(sorted(a["404"])) for a in seen.values()}) == 1
    assert len({a["404"]["message"] for a in seen.values()}) == 1
