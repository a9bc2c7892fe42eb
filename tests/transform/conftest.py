"""Helpers for transform tests: raw events as ingest would write them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from ponte.shared import kafka
from ponte.shared.events import Operation, RawEvent
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind

BASE_TIME = datetime(2024, 11, 14, 15, 0, tzinfo=UTC)


def raw_event(
    table: str,
    row: dict[str, Any],
    *,
    source_id: str,
    minute: int = 0,
    operation: str = "upsert",
    event_id: str | None = None,
    kind: SourceKind = SourceKind.ERP,
) -> RawEvent:
    event_id = event_id or f"evt_{uuid.uuid4().hex[:12]}/0"
    return RawEvent(
        event_id=event_id,
        delivery_id=event_id.split("/")[0],
        index=0,
        count=1,
        source_id=source_id,
        source_kind=kind,
        source_event_id=event_id,
        topic=table,
        operation=Operation(operation),
        record_key=str(row.get("codigo", "k")),
        occurred_at=BASE_TIME + timedelta(minutes=minute),
        received_at=BASE_TIME,
        payload=row,
    )


@pytest.fixture
def source_id() -> str:
    """A fresh source per test: tests share one database but never each other's rows."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer on the test's topics (which it creates); stopped after."""
    await kafka.ensure_topics(settings)
    producer = kafka.create_producer(settings)
    await producer.start()
    yield producer
    await producer.stop()


@contextlib.asynccontextmanager
async def transform_api(
    settings: Settings, pool: Any, token: str = "transform-api-token-0123456789"
) -> AsyncIterator[Any]:
    """An HTTP client of the transform's real app over ``pool``, with the ops token: the
    read routes need only the pool, so no consumer is started."""
    import httpx
    from pydantic import SecretStr

    from ponte.transform.app import create_app

    app = create_app(settings.model_copy(update={"ops_token": SecretStr(token)}))
    app.state.pool = pool
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://transform",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client
