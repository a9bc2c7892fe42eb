"""The ``ponte`` command as a newcomer uses it, each call a real subprocess: signing and
sending samples to a stack found through ``.ponte/dev.env``, checking and loading a
sources file, and one line (no traceback) when the broker or the database is not there.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from ponte import dev_env
from ponte.shared.settings import Settings
from tests.conftest import serve_ingest, write_sources

pytestmark = pytest.mark.integration


async def ponte(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``ponte <args>`` in ``cwd``, awaited (the test's own ingest serves in this loop)."""
    import os

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ponte.cli", *args,
        cwd=cwd, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def answer(stdout: str) -> tuple[int, dict[str, object]]:
    status, _, body = stdout.strip().partition(" ")
    return int(status), json.loads(body)


async def test_sign_sends_a_fresh_delivery_for_every_kind_of_demo_source(
    settings: Settings, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    demo = {f"erp-{suffix}": "erp", f"shop-{suffix}": "shopify", f"woo-{suffix}": "woocommerce"}
    secrets = {sid: f"whsec_secret-{sid}-0123456789abcdef" for sid in demo}
    sources = write_sources(
        tmp_path / "sources.yaml",
        [{"id": sid, "kind": kind, "secrets": [secrets[sid]]} for sid, kind in demo.items()],
    )
    configured = settings.model_copy(update={"sources_file": sources})
    async for ingest in serve_ingest(configured):
        dev_env.write(
            {
                "PONTE_DEV_INGEST_URL": ingest.url,
                "PONTE_DEV_SOURCES": ",".join(f"{sid}:{kind}" for sid, kind in demo.items()),
                **{dev_env.secret_key(sid): secret for sid, secret in secrets.items()},
            },
            tmp_path / dev_env.DEV_ENV,
        )
        for sid in demo:  # no --url, no --secret: both come from the dev stack's file
            code, out, err = await ponte("sign", sid, "--send", cwd=tmp_path)
            assert code == 0, out + err
            status, body = answer(out)
            assert status == 202 and body["duplicate"] is False, out
        again = answer((await ponte("sign", f"erp-{suffix}", "--send", cwd=tmp_path))[1])
        assert again[0] == 202 and again[1]["duplicate"] is False  # a fresh id each call
        for expected in (202, 200):  # asked to repeat one id: the re-send is a duplicate
            code, out, _ = await ponte(
                "sign", f"erp-{suffix}", "--send", "--repeat-id", f"msg_{suffix}", cwd=tmp_path
            )
            assert answer(out)[0] == expected, out
        code, curl, _ = await ponte("sign", f"shop-{suffix}", cwd=tmp_path)
        assert code == 0 and curl.startswith(f"curl -sS -X POST '{ingest.url}/webhooks/shop-")
        assert "x-shopify-hmac-sha256" in curl and "x-shopify-topic: orders/updated" in curl


async def test_sign_without_a_stack_says_what_is_missing(tmp_path: Path) -> None:
    code, _, err = await ponte("sign", "erp-demo", cwd=tmp_path)
    assert code == 2 and "no running make dev stack" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["replay"], ["topics"]])
async def test_an_unreachable_broker_is_one_line_and_exit_1(
    tmp_path: Path, command: list[str]
) -> None:
    env = {"PONTE_KAFKA_BOOTSTRAP": "127.0.0.1:9", "PONTE_PRODUCE_TIMEOUT_S": "1"}
    code, _, err = await ponte(*command, cwd=tmp_path, env=env)
    assert code == 1, err
    assert "ponte: cannot reach the Kafka broker at 127.0.0.1:9" in err
    assert "PONTE_KAFKA_BOOTSTRAP" in err and "Traceback" not in err
    code, _, err = await ponte("--debug", *command, cwd=tmp_path, env=env)
    assert code == 1 and "Traceback" in err


async def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "s.yaml", [{"id": "erp-x", "kind": "erp", "secrets": ["s"]}])
    env = {"PONTE_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:9/postgres"}
    code, _, err = await ponte("sources", "load", str(sources), cwd=tmp_path, env=env)
    assert code == 1, err
    assert "ponte: cannot reach PostgreSQL at 127.0.0.1:9/postgres" in err
    assert "PONTE_DATABASE_URL" in err and "Traceback" not in err


async def test_sources_check_stores_nothing_and_load_stores(
    base_settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    source_id = f"erp-cli-{uuid.uuid4().hex[:6]}"
    sources = write_sources(
        tmp_path / "s.yaml", [{"id": source_id, "kind": "erp", "secrets": ["s3cret-cli"]}]
    )
    env = {"PONTE_DATABASE_URL": base_settings.database_url}
    code, out, err = await ponte("sources", "check", str(sources), cwd=tmp_path, env=env)
    assert code == 0 and out.strip() == f"{source_id}\terp\tactive=True", out + err
    assert await pool.fetchval("SELECT count(*) FROM sources WHERE id = $1", source_id) == 0
    code, out, err = await ponte("sources", "load", str(sources), cwd=tmp_path, env=env)
    assert code == 0 and out.strip() == f"{source_id}\tcreated", out + err
    assert await pool.fetchval("SELECT count(*) FROM sources WHERE id = $1", source_id) == 1


async def test_migrate_applies_a_model_extension_and_refuses_a_destructive_one(
    fresh_database: str, tmp_path: Path
) -> None:
    model = tmp_path / "model.yaml"
    model.write_text(
        "entities:\n  company:\n    columns:\n      credit_limit: {type: decimal, precision: 14, "
        "scale: 2}\n  visit:\n    columns:\n      company_id: {reference: company}\n",
        encoding="utf-8",
    )
    env = {"PONTE_DATABASE_URL": fresh_database, "PONTE_MODEL_FILE": str(model)}
    code, out, _ = await ponte("migrate", "--dry-run", cwd=tmp_path, env=env)
    assert code == 0 and "would create entity visit (table visits)" in out
    code, out, err = await ponte("migrate", cwd=tmp_path, env=env)
    assert code == 0, err
    assert "add column company.credit_limit NUMERIC(14, 2)" in out and "CRM model" in out
    code, out, _ = await ponte("migrate", cwd=tmp_path, env=env)
    assert code == 0 and "add column" not in out  # nothing left to do
    model.write_text("entities:\n  visit:\n    columns:\n      company_id: {reference: company}\n")
    code, out, err = await ponte("migrate", cwd=tmp_path, env=env)
    assert code == 1
    assert "column company.credit_limit is in the database and not in the model" in err
    assert "Traceback" not in err
