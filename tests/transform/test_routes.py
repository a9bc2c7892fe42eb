"""The transform's read API: what waits, what was rejected, what the mapping ignores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from ponte.shared.mapping import default_mapping
from ponte.shared.settings import Settings
from ponte.transform.normalize import normalize_record
from ponte.transform.repository.applier import BatchApplier
from tests.transform.conftest import raw_event, transform_api

pytestmark = pytest.mark.integration

TOKEN = "transform-routes-token-0123456789"


@pytest.fixture
async def client(base_settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with transform_api(base_settings, pool, TOKEN) as client:
        yield client


async def test_parked_references_are_listed_and_counted(
    client: httpx.AsyncClient, pool: asyncpg.Pool, source_id: str
) -> None:
    event = raw_event(
        "Contato", {"codigo": "C1", "conjuge": "C2", "empresa": "E1"}, source_id=source_id
    )
    async with pool.acquire() as connection, connection.transaction():
        await BatchApplier(connection).apply([normalize_record(event, default_mapping("erp"))])
    response = await client.get("/parked-references", params={"source_id": source_id})
    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 2
    assert {(i["column_name"], i["target_key"]) for i in page["items"]} == {
        ("spouse_id", "C2"),
        ("company_id", "E1"),
    }
    spouse = next(i for i in page["items"] if i["column_name"] == "spouse_id")
    assert spouse["reason"] == f"contact 'C2' of source '{source_id}' has not arrived"
    assert spouse["target_source"] == source_id and spouse["target_field"] is None
    assert 0 <= spouse["age_s"] < 60
    assert (await client.get("/parked-references", params={"limit": 0})).status_code == 422


async def test_rejections_and_unmapped_are_listed(
    client: httpx.AsyncClient, pool: asyncpg.Pool, base_settings: Settings, source_id: str
) -> None:
    from ponte.transform.processor import BatchProcessor
    from tests.transform.test_consumer import _Message

    events = [
        raw_event("Empresa", {"codigo": "E1", "cnpj": "123", "cor": "azul"}, source_id=source_id),
        raw_event("Empresa", {"codigo": "E2", "cor": "verde"}, source_id=source_id),
    ]
    await BatchProcessor(pool, base_settings).process([_Message(e) for e in events])

    rejections = (await client.get("/rejections", params={"source_id": source_id})).json()
    assert rejections["count"] == 1
    assert rejections["items"][0]["field"] == "Empresa.cnpj"
    unmapped = (await client.get("/unmapped-fields", params={"source_id": source_id})).json()
    assert [(u["source_table"], u["field"], u["occurrences"]) for u in unmapped["items"]] == [
        ("Empresa", "cor", 1)
    ]  # E1 was rejected at cnpj, before its "cor" was read
    empty = await client.get("/rejections", params={"source_id": "nobody", "limit": 5})
    assert empty.json() == {"count": 0, "items": []}
