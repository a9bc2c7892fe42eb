"""The transform's read API: what waits, what was rejected, what the mapping ignores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from ponte.shared.settings import Settings
from ponte.transform.app import create_app
from ponte.transform.mapping import default_mapping
from ponte.transform.normalize import normalize_record
from ponte.transform.repository import BatchApplier
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(base_settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(base_settings)
    app.state.pool = pool  # the routes need only the pool; no consumer is started
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://transform"
    ) as client:
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
    assert (await client.get("/parked-references", params={"limit": 0})).status_code == 422


async def test_rejections_and_unmapped_are_listed(client: httpx.AsyncClient) -> None:
    for path in ("/rejections", "/unmapped-fields"):
        response = await client.get(path, params={"source_id": "nobody", "limit": 5})
        assert response.status_code == 200 and response.json() == {"count": 0, "items": []}
