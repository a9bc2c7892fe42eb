"""``ponte migrate`` brings a real PostgreSQL to the CRM model: the shipped model file is
exactly what the migrations made, an extension is applied additively, anything that would
lose data is refused with the entity and column named, and a run that fails midway
leaves nothing behind. Each test gets a database of its own on the session's server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from ponte.shared import crm_schema
from ponte.shared.crm_model import CrmModel, build_model, shipped_model_text
from ponte.shared.crm_schema import SchemaFailed, SchemaRefused, apply_model, plan_changes

pytestmark = pytest.mark.integration

EXTENSION = """
entities:
  company:
    columns:
      credit_limit: {type: decimal, precision: 14, scale: 2}
      region_id: code
      phone: text
  visit:
    columns:
      company_id: {reference: company, index: true}
      visited_on: date
      outcome: text
  visit_note:
    parent: {entity: visit}
    columns:
      line: integer
      text: text
"""


def credit_limit(spec: str) -> str:
    """An extension declaring ``company.credit_limit`` as ``spec``."""
    return f"entities:\n  company:\n    columns:\n      credit_limit: {spec}\n"


def model_with(*extensions: str) -> CrmModel:
    files = [("crm_model.yaml", shipped_model_text())]
    files += [(f"extension-{i}.yaml", text) for i, text in enumerate(extensions)]
    return build_model(files)


@pytest.fixture
def database(fresh_database: str) -> str:
    return fresh_database


async def plan(url: str, model: CrmModel) -> crm_schema.SchemaPlan:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(plan_changes, model, {})
    finally:
        await engine.dispose()


async def columns_of(url: str, table: str) -> dict[str, str]:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        rows = await connection.fetch(
            "SELECT column_name, data_type, numeric_precision, numeric_scale "
            "FROM information_schema.columns WHERE table_name = $1",
            table,
        )
    finally:
        await connection.close()
    return {
        r["column_name"]: r["data_type"]
        + (
            f"({r['numeric_precision']},{r['numeric_scale']})"
            if r["data_type"] == "numeric"
            else ""
        )
        for r in rows
    }


async def test_the_shipped_model_is_what_the_migrations_made(database: str) -> None:
    found = await plan(database, model_with())
    assert found.empty and found.refused == [], found.describe(model_with())


async def test_an_extension_is_applied_additively_with_real_keys(database: str) -> None:
    model = model_with(EXTENSION)
    result = await apply_model(database, model)
    assert "create entity visit (table visits)" in result.applied
    assert "add column company.credit_limit NUMERIC(14, 2)" in result.applied
    assert (await columns_of(database, "companies"))["credit_limit"] == "numeric(14,2)"
    assert set(await columns_of(database, "visit_notes")) >= {"visit_id", "line", "text"}
    connection = await asyncpg.connect(database.replace("+asyncpg", ""))
    try:
        keys = {
            (r["table_name"], r["column_name"], r["foreign_table"])
            for r in await connection.fetch(
                "SELECT tc.table_name, kcu.column_name, ccu.table_name AS foreign_table "
                "FROM information_schema.table_constraints tc "
                "JOIN information_schema.key_column_usage kcu USING (constraint_name) "
                "JOIN information_schema.constraint_column_usage ccu USING (constraint_name) "
                "WHERE tc.constraint_type = 'FOREIGN KEY'"
            )
        }
        assert {
            ("companies", "region_id", "codes"),
            ("visits", "company_id", "companies"),
            ("visit_notes", "visit_id", "visits"),
        } <= keys
        # The natural key is enforced by PostgreSQL itself.
        await connection.execute(
            "INSERT INTO visits (source_id, source_table, source_key, extra) "
            "VALUES ('erp', 'Visita', 'V1', '{}')"
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(
                "INSERT INTO visits (source_id, source_table, source_key, extra) "
                "VALUES ('erp', 'Visita', 'V1', '{}')"
            )
        recorded = await connection.fetchval("SELECT digest FROM crm_model_state")
    finally:
        await connection.close()
    assert recorded == model.digest
    again = await apply_model(database, model)
    assert again.applied == []  # idempotent


async def test_a_new_index_on_an_existing_table_is_built(database: str) -> None:
    model = model_with(
        "entities:\n  contact:\n    columns:\n      nickname: {type: text, index: true}\n"
    )
    result = await apply_model(database, model)
    assert "add index ix_contacts_nickname on contact (nickname)" in result.applied
    connection = await asyncpg.connect(database.replace("+asyncpg", ""))
    try:
        valid = await connection.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_contacts_nickname'::regclass"
        )
    finally:
        await connection.close()
    assert valid is True


@pytest.mark.parametrize(
    ("later", "problem"),
    [
        ("", "column company.credit_limit is in the database and not in the model"),
        (
            credit_limit("{type: decimal, precision: 10, scale: 2}"),
            "column company.credit_limit is NUMERIC(14, 2) in the database and NUMERIC(10, 2)",
        ),
        (
            credit_limit("text"),
            "column company.credit_limit is NUMERIC(14, 2) in the database and VARCHAR",
        ),
    ],
)
async def test_destructive_or_narrowing_changes_are_refused_and_nothing_is_applied(
    database: str, later: str, problem: str
) -> None:
    await apply_model(
        database,
        model_with(credit_limit("{type: decimal, precision: 14, scale: 2}")),
    )
    # The same run also asks for something additive: it must not be applied either.
    additive = "entities:\n  brand:\n    columns:\n      website: text\n"
    with pytest.raises(SchemaRefused) as refused:
        await apply_model(database, model_with(later, additive))
    assert problem in str(refused.value)
    assert "website" not in await columns_of(database, "brands")


async def test_an_entity_removed_from_the_model_is_refused(database: str) -> None:
    await apply_model(database, model_with(EXTENSION))
    with pytest.raises(
        SchemaRefused,
        match=r"entity visit_note \(table visit_notes\) is in the database and no longer",
    ):
        await apply_model(database, model_with(EXTENSION.split("  visit_note:")[0]))


async def test_a_widened_decimal_is_applied(database: str) -> None:
    await apply_model(
        database, model_with(credit_limit("{type: decimal, precision: 14, scale: 2}"))
    )
    result = await apply_model(
        database, model_with(credit_limit("{type: decimal, precision: 18, scale: 2}"))
    )
    assert result.applied == ["widen company.credit_limit from NUMERIC(14, 2) to NUMERIC(18, 2)"]
    assert (await columns_of(database, "companies"))["credit_limit"] == "numeric(18,2)"


async def test_a_migration_that_fails_midway_leaves_nothing_behind(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long transaction reading ``companies`` holds a lock the new column needs: the
    new entity's tables, created first in the same run, must be gone too."""
    monkeypatch.setattr(crm_schema, "LOCK_TIMEOUT", "300ms")
    reader = await asyncpg.connect(database.replace("+asyncpg", ""))
    try:
        transaction = reader.transaction()
        await transaction.start()
        await reader.fetch("SELECT * FROM companies LIMIT 1")  # holds ACCESS SHARE
        with pytest.raises(SchemaFailed, match=r"nothing of this run was applied.*lock timeout"):
            await apply_model(database, model_with(EXTENSION))
        await transaction.rollback()
        assert await reader.fetchval("SELECT to_regclass('visits')") is None
        assert await reader.fetchval("SELECT count(*) FROM crm_model_state") == 0
    finally:
        await reader.close()
    assert "credit_limit" not in await columns_of(database, "companies")
    result = await apply_model(database, model_with(EXTENSION))  # once the lock is gone
    assert "create entity visit (table visits)" in result.applied


def test_dry_run_plans_without_applying(database: str) -> None:
    result = asyncio.run(apply_model(database, model_with(EXTENSION), dry_run=True))
    assert "create entity visit_note (table visit_notes)" in result.applied
    assert "credit_limit" not in asyncio.run(columns_of(database, "companies"))


def test_write_order_puts_parents_and_targets_first() -> None:
    order = list(model_with(EXTENSION).entities)
    assert order.index("company") < order.index("visit") < order.index("visit_note")
    assert order.index("code") < order.index("company")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "entities:\n  visit:\n    columns:\n      outcome: colour\n",
            "extension-0.yaml: line 4: entities.visit.columns.outcome: Input should be",
        ),
        (
            "entities:\n  visit:\n    columns:\n      place_id: {reference: place}\n",
            "line 4: entities.visit.columns.place_id: refers to entity 'place', which is not",
        ),
        (
            "entities:\n  company:\n    columns:\n      code: integer\n",
            "line 4: entities.company.columns.code: entity 'company' already has column 'code'",
        ),
        (
            "entities:\n  company:\n    table: firms\n",
            "line 3: entities.company.table: entity 'company' is already in the model",
        ),
        (
            "entities:\n  visit:\n    columns:\n      source_key: text\n",
            "line 4: entities.visit.columns.source_key: 'source_key' is a bookkeeping column",
        ),
        (
            "entities:\n  a:\n    parent: {entity: b}\n  b:\n    parent: {entity: a}\n",
            "parents form a cycle: a > b > a",
        ),
        (
            "entities:\n  visit:\n    columns:\n      n: {type: decimal, scale: 6, precision: 4}\n",
            "line 4: entities.visit.columns.n: Value error, scale 6 is larger than precision 4",
        ),
    ],
)
def test_a_model_error_names_the_file_line_entity_and_column(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model_with(text)


def test_a_model_file_path_loads(tmp_path: Path) -> None:
    from ponte.shared.crm_model import load_model

    path = tmp_path / "model.yaml"
    path.write_text(EXTENSION, encoding="utf-8")
    model = load_model(path)
    assert model.parent_of("visit_note") == ("visit", "visit_id")
    assert model.entity("company").columns["credit_limit"].describe() == "decimal(14,2)"
    assert model.files == ("ponte/shared/crm_model.yaml", str(path))


async def test_two_new_entities_referring_to_each_other_are_created(database: str) -> None:
    cycle = (
        "entities:\n  region:\n    columns:\n      manager_id: {reference: agent}\n"
        "  agent:\n    columns:\n      region_id: {reference: region}\n"
    )
    result = await apply_model(database, model_with(cycle))
    assert {"create entity region (table regions)", "create entity agent (table agents)"} <= set(
        result.applied
    )
    connection = await asyncpg.connect(database.replace("+asyncpg", ""))
    try:
        keys = await connection.fetchval(
            "SELECT count(*) FROM information_schema.table_constraints "
            "WHERE constraint_type = 'FOREIGN KEY' AND table_name IN ('regions', 'agents')"
        )
    finally:
        await connection.close()
    assert keys == 2
