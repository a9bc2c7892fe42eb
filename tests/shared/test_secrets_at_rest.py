"""Source secrets at rest (issue #20): PostgreSQL holds them encrypted under
PONTE_SECRETS_KEY, a key rotation works, the migration converts plaintext rows, and no
service runs without a key. Against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic import command
from pydantic import SecretStr

from ponte.shared import db
from ponte.shared.secret_box import SecretBox, SecretsKeyMissing, generate_key
from ponte.shared.settings import Settings
from ponte.shared.sources import SourceConfig, apply_sources, fetch_sources, reseal_sources
from tests.conftest import BOX

SECRET = "whsec_a-signing-secret-nobody-may-read-back"


def test_a_sealed_secret_is_not_the_secret_and_opens_only_with_a_key() -> None:
    sealed = BOX.seal(SECRET)
    assert SECRET not in sealed and sealed.startswith("fernet:")
    assert BOX.seal(SECRET) != sealed  # a fresh nonce each time
    assert BOX.open(sealed) == SECRET
    with pytest.raises(ValueError, match="does not decrypt"):
        SecretBox([generate_key()]).open(sealed)
    with pytest.raises(ValueError, match="not encrypted"):
        BOX.open(SECRET)


def test_no_key_is_refused_naming_the_setting() -> None:
    with pytest.raises(SecretsKeyMissing, match="PONTE_SECRETS_KEY"):
        SecretBox.from_settings(Settings(_env_file=None, secrets_key=None))
    with pytest.raises(ValueError, match="key 2 is not a Fernet key"):
        SecretBox.from_settings(
            Settings(_env_file=None, secrets_key=SecretStr(f"{generate_key()},not-a-key"))
        )


@pytest.mark.integration
async def test_stored_bytes_are_not_the_plaintext(pool: asyncpg.Pool) -> None:
    source_id = f"enc-{uuid.uuid4().hex[:8]}"
    config = SourceConfig(id=source_id, kind="erp", secrets=[SECRET])
    await apply_sources(pool, [config], BOX)
    raw = await pool.fetchval("SELECT secrets::text FROM sources WHERE id = $1", source_id)
    assert SECRET not in raw and "fernet:" in raw
    # Nowhere in the row's bytes either (the config digest is a hash, not the secret).
    row = await pool.fetchval("SELECT s::text FROM sources s WHERE id = $1", source_id)
    assert SECRET not in row
    assert (await fetch_sources(pool, BOX))[source_id].secrets == [SECRET]


@pytest.fixture
async def fresh_database(base_settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Settings]:
    """A database of its own on the session's PostgreSQL, for migrating up and down."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    await pool.execute(f'CREATE DATABASE "{name}"')
    url = base_settings.database_url.rsplit("/", 1)[0] + "/" + name
    yield base_settings.model_copy(update={"database_url": url})
    await pool.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.integration
async def test_the_migration_encrypts_existing_plaintext_rows(fresh_database: Settings) -> None:
    settings = fresh_database
    await asyncio.to_thread(db.migrate, settings, "0011")
    connection = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await connection.execute(
            "INSERT INTO sources (id, kind, active, display_name, secrets, allowed_cidrs, "
            "tables, created_at, updated_at) VALUES "
            "('old-erp', 'erp', true, '', $1::jsonb, '[]', '[]', now(), now())",
            f'["{SECRET}", "second-secret"]',
        )
        keyless = settings.model_copy(update={"secrets_key": None})
        with pytest.raises(RuntimeError, match="PONTE_SECRETS_KEY must be set"):
            await asyncio.to_thread(db.migrate, keyless)
        await asyncio.to_thread(db.migrate, settings)
        stored = await connection.fetchval("SELECT secrets::text FROM sources")
        assert SECRET not in stored and "second-secret" not in stored
        pool = await db.create_pool(settings)
        try:
            assert (await fetch_sources(pool, BOX))["old-erp"].secrets == [SECRET, "second-secret"]
        finally:
            await pool.close()
        await asyncio.to_thread(db.migrate, settings)  # again: nothing left to convert
        await asyncio.to_thread(command.downgrade, db.alembic_config(settings), "0011")
        assert json.loads(await connection.fetchval("SELECT secrets FROM sources")) == [
            SECRET,
            "second-secret",
        ]
    finally:
        await connection.close()


@pytest.mark.integration
async def test_rotation_decrypts_with_any_key_and_rekeys_under_the_first(
    fresh_database: Settings,
) -> None:
    """In a database of its own: a re-key touches every row, and the shared database's
    rows are under the session's key."""
    await asyncio.to_thread(db.migrate, fresh_database)
    pool = await db.create_pool(fresh_database)
    try:
        await _rotate(pool)
    finally:
        await pool.close()


async def _rotate(pool: asyncpg.Pool) -> None:
    old, new = generate_key(), generate_key()
    source_id = f"rot-{uuid.uuid4().hex[:8]}"
    await apply_sources(
        pool, [SourceConfig(id=source_id, kind="erp", secrets=[SECRET])], SecretBox([old])
    )
    rotating = SecretBox([new, old])  # the new key first: it encrypts, both decrypt
    assert (await fetch_sources(pool, rotating))[source_id].secrets == [SECRET]
    with pytest.raises(ValueError, match="keep the old key"):
        await reseal_sources(pool, SecretBox([new]))  # the old key dropped too early
    assert await reseal_sources(pool, rotating) == 1
    # The old key dropped: what was stored under it is now readable under the new alone.
    assert (await fetch_sources(pool, SecretBox([new])))[source_id].secrets == [SECRET]
    assert source_id not in await fetch_sources(pool, SecretBox([old]))  # logged, left out


@pytest.mark.integration
@pytest.mark.parametrize("service", ["ingest", "ops"])
async def test_ingest_and_ops_refuse_to_start_without_a_key(
    base_settings: Settings, service: str
) -> None:
    """The services that read or write source secrets stop at start, naming the setting,
    rather than store them plain or fail on the first webhook."""
    import importlib

    settings = base_settings.model_copy(
        update={"secrets_key": None, "ops_token": SecretStr("a-token-long-enough-for-ops")}
    )
    app = importlib.import_module(f"ponte.{service}.app").create_app(settings)
    with pytest.raises(SecretsKeyMissing, match="PONTE_SECRETS_KEY"):
        async with app.router.lifespan_context(app):
            pass
