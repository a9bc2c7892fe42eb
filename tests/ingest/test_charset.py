"""Issue #20's charset case: a body declared in a single-byte charset (ISO-8859-1,
cp1252) that is valid UTF-8 with multi-byte sequences was stored as mojibake with no
warning. Now it is accepted with a warning in its history row, or refused with 415 by a
source configured ``charset: strict``. Against the real ingest, broker and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from ponte.ingest.deliveries import charset_mismatch, single_byte
from ponte.shared.settings import Settings
from ponte.shared.sources import SourceConfig
from tests.conftest import RunningIngest, event_of, read_topic, serve_ingest, unique_topic
from tests.conftest import write_sources as write_sources_file
from tests.ingest.test_webhooks import ERP_SECRET, envelope, erp_headers, history_row

WARN = "charset-warn"
STRICT = "charset-strict"
NAME = "Comércio São João Ltda"


def test_only_single_byte_charsets_decode_utf8_silently() -> None:
    assert single_byte("iso8859-1") and single_byte("cp1252") and single_byte("iso8859-15")
    assert not single_byte("utf-16-le") and not single_byte("shift_jis")
    utf8 = NAME.encode()
    assert charset_mismatch(utf8, "iso8859-1") is not None
    assert "'é' reads 'Ã©'" in (charset_mismatch(utf8, "cp1252") or "")
    assert charset_mismatch(NAME.encode("latin-1"), "iso8859-1") is None  # really Latin-1
    assert charset_mismatch(b'{"a": "plain"}', "iso8859-1") is None  # ASCII: same in both
    assert charset_mismatch(utf8, "utf-8") is None


def test_the_setting_defaults_to_warn_and_leaves_old_digests_alone() -> None:
    entry = {"id": "s1", "kind": "erp", "secrets": ["x"]}
    config = SourceConfig.model_validate(entry)
    assert config.charset == "warn"
    strict = SourceConfig.model_validate({**entry, "charset": "strict"})
    assert strict.digest() != config.digest()
    with pytest.raises(ValueError, match="charset"):
        SourceConfig.model_validate({**entry, "charset": "lenient"})


@pytest.fixture(scope="module")
async def ingest(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningIngest]:
    sources = write_sources_file(
        tmp_path_factory.mktemp("charset") / "sources.yaml",
        [
            {"id": WARN, "kind": "erp", "secrets": [ERP_SECRET]},
            {"id": STRICT, "kind": "erp", "secrets": [ERP_SECRET], "charset": "strict"},
        ],
    )
    settings = base_settings.model_copy(
        update={"raw_topic": unique_topic(), "sources_file": sources}
    )
    async for running in serve_ingest(settings):
        yield running


async def _send(ingest: RunningIngest, source_id: str, body: bytes, charset: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            ingest.webhook(source_id),
            content=body,
            headers=erp_headers(body, content_type=f"application/json; charset={charset}"),
        )


def _body(encoding: str) -> bytes:
    document = envelope(table="Empresa", rows=[{"codigo": "000123", "razao_social": NAME}])
    return json.dumps(document, ensure_ascii=False).encode(encoding)


@pytest.mark.integration
@pytest.mark.parametrize("charset", ["ISO-8859-1", "windows-1252"])
async def test_utf8_declared_single_byte_is_accepted_with_a_warning_in_history(
    ingest: RunningIngest, pool: asyncpg.Pool, charset: str
) -> None:
    since = datetime.now(UTC)
    response = await _send(ingest, WARN, _body("utf-8"), charset)
    assert response.status_code == 202, response.text
    row = await history_row(pool, WARN, status=202, since=since)
    [warning] = row["warnings"]
    assert "valid UTF-8" in warning and "'é' reads 'Ã©'" in warning
    # Decoded as declared (what the sender said), so the warning is what tells.
    messages = await read_topic(
        ingest.settings.kafka_bootstrap, ingest.settings.raw_topic, expect=1
    )
    [mine] = [m for m in messages if event_of(m)["delivery_id"] == response.json()["event_id"]]
    assert event_of(mine)["payload"]["razao_social"] == NAME.encode().decode("latin-1")


@pytest.mark.integration
async def test_a_strict_source_refuses_it_with_415_and_records_why(
    ingest: RunningIngest, pool: asyncpg.Pool
) -> None:
    since = datetime.now(UTC)
    response = await _send(ingest, STRICT, _body("utf-8"), "ISO-8859-1")
    assert response.status_code == 415, response.text
    answer = response.json()
    assert answer["error"] == "charset_mismatch" and answer["field"] == "content-type"
    assert "valid UTF-8" in answer["message"] and "charset=utf-8" in answer["message"]
    row = await history_row(pool, STRICT, status=415, since=since)
    assert row["reason"] == "charset_mismatch" and row["outcome"] == "rejected"


@pytest.mark.integration
@pytest.mark.parametrize("source_id", [WARN, STRICT])
async def test_real_latin1_is_accepted_without_a_warning(
    ingest: RunningIngest, pool: asyncpg.Pool, source_id: str
) -> None:
    since = datetime.now(UTC)
    response = await _send(ingest, source_id, _body("latin-1"), "ISO-8859-1")
    assert response.status_code == 202, response.text
    row = await history_row(pool, source_id, status=202, since=since)
    assert row["warnings"] == []
