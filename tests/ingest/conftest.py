"""Fixtures shared by the ingest tests of pulled sources (REST pulls, FTP folders): an ERP
source registered in the database and a started publisher on the test's topics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ponte.ingest.publisher import EventPublisher
from ponte.shared.kafka import ensure_topics
from ponte.shared.settings import Settings
from ponte.shared.sources import SourceConfig, apply_sources
from tests.conftest import BOX

SOURCE_SECRET = "whsec_" + "cHVsbC10ZXN0LXNlY3JldC12YWx1ZQ=="


@pytest.fixture
async def source_id(pool: asyncpg.Pool) -> str:
    """A fresh active ERP source (every table allowed), by id."""
    source_id = f"pull-{uuid.uuid4().hex[:8]}"
    await apply_sources(
        pool, [SourceConfig(id=source_id, kind="erp", secrets=[SOURCE_SECRET])], BOX
    )
    return source_id


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    await ensure_topics(settings)
    publisher = EventPublisher(settings)
    await publisher.start()
    await asyncio.wait_for(publisher.started.wait(), 20)
    yield publisher
    await publisher.stop()
