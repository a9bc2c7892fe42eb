"""Every service against its own OpenAPI document (schemathesis): no 5xx, every status
and body as documented, whatever the client sends. Services run as their own processes
on the session's broker and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ponte.shared.kafka import ensure_topics
from ponte.shared.settings import Settings
from tests.conftest import service_env, start_service, write_sources
from tests.scale.test_graceful_and_scale_out import wait_ready

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("service", ["ingest", "transform", "deliver"])
async def test_api_matches_its_openapi_under_generated_requests(
    service: str,
    settings: Settings,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    await ensure_topics(settings)
    sources = write_sources(
        tmp_path / "sources.yaml", [{"id": "erp-fuzz", "kind": "erp", "secrets": ["fuzz-secret"]}]
    )
    env = service_env(settings, PONTE_SOURCES_FILE=str(sources))
    process = start_service(service, env)
    processes.append(process)
    url = f"http://127.0.0.1:{env['PONTE_HTTP_PORT']}"
    await wait_ready(url, process)
    async with httpx.AsyncClient() as client:  # the document itself is served and valid JSON
        assert (await client.get(f"{url}/openapi.json")).json()["paths"]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/openapi.json",
            # A fixed seed keeps CI deterministic; this one finds a NUL in a query string,
            # which once made /unmapped-fields answer 500.
            "--checks",
            "all",
            "--max-examples",
            "60",
            "--seed",
            "3",
            "--suppress-health-check",
            "all",
            # /readyz answers 503 by design while a dependency is away (documented).
            "--exclude-path",
            "/readyz",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:]
