"""The Alembic migrations and the SQLModel classes describe the same schema, and the
shipped CRM model file describes the entity tables the migrations made."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from ponte.shared import models as _models  # noqa: F401  (registers the tables)
from ponte.shared.crm_model import crm_model
from ponte.shared.settings import Settings

pytestmark = pytest.mark.integration


async def test_models_match_migrations(base_settings: Settings) -> None:
    engine = create_async_engine(base_settings.database_url)
    try:
        async with engine.connect() as connection:

            def diff(sync_connection: Any) -> list[Any]:
                context = MigrationContext.configure(sync_connection)
                combined = MetaData()
                for table in [*SQLModel.metadata.tables.values(), *crm_model().tables.values()]:
                    table.to_metadata(combined)
                return list(compare_metadata(context, combined))

            differences = await connection.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []
