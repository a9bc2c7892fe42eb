"""References that name their target by another field (a CNPJ, an e-mail) and in another
source (a shop's customer to the ERP's company), resolved in either arrival order, never
guessed between two candidates, and dead-lettered with their context once too old."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from ponte.shared.mapping import default_mapping, load_mapping
from ponte.shared.settings import Settings
from ponte.transform.normalize import normalize_record
from ponte.transform.processor import BatchProcessor
from ponte.transform.repository.applier import BatchApplier
from ponte.transform.repository.changes import BatchResult
from tests.transform.conftest import raw_event

pytestmark = pytest.mark.integration

CNPJ = "11.222.333/0001-81"
DIGITS = "11222333000181"


@pytest.fixture
def erp_source() -> str:
    return f"erp-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def shop_mapping(tmp_path: Path, erp_source: str) -> Any:
    path = tmp_path / "shop.yaml"
    path.write_text(
        "kind: erp\ntables:\n  Cliente:\n    entity: contact\n    key: [id]\n    fields:\n"
        "      id: code\n      email: {column: email, type: email}\n"
        f"      cnpj: {{reference: company, column: company_id, by: document, "
        f"type: document, source: {erp_source}}}\n"
        "  Contato:\n    entity: contact\n    key: [id]\n    fields:\n"
        f"      empresa: {{reference: company, column: company_id, source: {erp_source}}}\n",
        encoding="utf-8",
    )
    return load_mapping(path)


async def apply(pool: asyncpg.Pool, *pairs: tuple[Any, Any]) -> BatchResult:
    async with pool.acquire() as connection, connection.transaction():
        return await BatchApplier(connection).apply(
            [normalize_record(event, mapping) for event, mapping in pairs]
        )


def company(source: str, code: str, cnpj: str = CNPJ, **more: Any) -> tuple[Any, Any]:
    row = {"codigo": code, "cnpj": cnpj, "razao_social": f"Empresa {code}", **more}
    return raw_event("Empresa", row, source_id=source), default_mapping("erp")


def customer(source: str, mapping: Any, cnpj: str = CNPJ) -> tuple[Any, Any]:
    row = {"id": "K1", "email": "Ana@Acme.example", "cnpj": cnpj}
    return raw_event("Cliente", row, source_id=source, minute=1), mapping


async def company_of_contact(pool: asyncpg.Pool, source: str) -> Any:
    return await pool.fetchval(
        "SELECT c.source_key FROM contacts t JOIN companies c ON c.id = t.company_id "
        "WHERE t.source_id = $1 AND t.source_key = 'K1'",
        source,
    )


async def test_a_reference_by_cnpj_across_sources_waits_then_resolves(
    pool: asyncpg.Pool, source_id: str, erp_source: str, shop_mapping: Any
) -> None:
    parked = await apply(pool, customer(source_id, shop_mapping))
    assert parked.parked == 1
    waiting = await pool.fetchrow(
        "SELECT * FROM parked_references WHERE source_id = $1 AND column_name = 'company_id'",
        source_id,
    )
    assert (waiting["target_source"], waiting["target_field"], waiting["target_key"]) == (
        erp_source,
        "document",
        DIGITS,  # read as the target column is stored: the CNPJ's digits
    )
    assert waiting["reason"] == (
        f"no live company of source '{erp_source}' has document '{DIGITS}' yet"
    )
    resolved = await apply(pool, company(erp_source, "E1"))
    assert resolved.resolved >= 1
    assert await company_of_contact(pool, source_id) == "E1"


async def test_the_target_first_resolves_at_once(
    pool: asyncpg.Pool, source_id: str, erp_source: str, shop_mapping: Any
) -> None:
    await apply(pool, company(erp_source, "E1"))
    result = await apply(pool, customer(source_id, shop_mapping))
    assert result.parked == 0
    assert await company_of_contact(pool, source_id) == "E1"


async def test_a_company_of_another_source_with_that_cnpj_is_not_a_match(
    pool: asyncpg.Pool, source_id: str, erp_source: str, shop_mapping: Any
) -> None:
    await apply(pool, company(f"other-{erp_source}", "E1"))
    result = await apply(pool, customer(source_id, shop_mapping))
    assert result.parked == 1 and await company_of_contact(pool, source_id) is None


async def test_two_candidates_are_never_guessed_between(
    pool: asyncpg.Pool, source_id: str, erp_source: str, shop_mapping: Any
) -> None:
    await apply(pool, company(erp_source, "E1"), company(erp_source, "E2"))
    result = await apply(pool, customer(source_id, shop_mapping))
    assert result.parked == 1 and await company_of_contact(pool, source_id) is None
    reason = await pool.fetchval(
        "SELECT reason FROM parked_references WHERE source_id = $1 AND column_name = 'company_id'",
        source_id,
    )
    assert reason.startswith(f"2 company rows of source '{erp_source}' have document '{DIGITS}'")
    # One of them deleted: the other is the only candidate, found by the sweep.
    deleted = raw_event(
        "Empresa", {"codigo": "E2"}, source_id=erp_source, minute=5, operation="delete"
    )
    await apply(pool, (deleted, default_mapping("erp")))
    async with pool.acquire() as connection, connection.transaction():
        swept = await BatchApplier(connection).sweep_parked()
    assert swept.resolved >= 1
    assert await company_of_contact(pool, source_id) == "E1"


async def test_a_reference_by_key_in_another_source(
    pool: asyncpg.Pool, source_id: str, erp_source: str, shop_mapping: Any
) -> None:
    event = raw_event("Contato", {"id": "K1", "empresa": "E7"}, source_id=source_id)
    assert (await apply(pool, (event, shop_mapping))).parked == 1
    await apply(pool, company(source_id, "E7"))  # the same key in the row's own source
    assert await company_of_contact(pool, source_id) is None
    await apply(pool, company(erp_source, "E7"))
    assert await company_of_contact(pool, source_id) == "E7"
    owner = await pool.fetchval(
        "SELECT c.source_id FROM contacts t JOIN companies c ON c.id = t.company_id "
        "WHERE t.source_id = $1",
        source_id,
    )
    assert owner == erp_source


async def test_an_old_parked_reference_is_dead_lettered_with_its_context(
    pool: asyncpg.Pool, settings: Settings, source_id: str, erp_source: str, shop_mapping: Any
) -> None:
    await apply(pool, customer(source_id, shop_mapping))
    await pool.execute(
        "UPDATE parked_references SET parked_at = parked_at - $2::interval WHERE source_id = $1",
        source_id,
        timedelta(days=8),
    )
    processor = BatchProcessor(
        pool, settings.model_copy(update={"parked_reference_expiry_s": 7 * 86400})
    )
    await processor.sweep_parked()
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM parked_references WHERE source_id = $1", source_id
        )
        == 0
    )
    letter = await pool.fetchrow(
        "SELECT * FROM outbox WHERE topic = $1 AND headers->>'ponte-source' = $2",
        settings.transform_dead_letter_topic,
        source_id,
    )
    assert letter is not None
    value = orjson.loads(letter["value"])
    assert value["error"]["code"] == "reference_expired"
    assert value["identity"]["record_key"] == "K1"
    assert value["reference"]["target_field"] == "document"
    assert (
        f"waited 8.0 days for company document '{DIGITS}' of source '{erp_source}'"
        in (value["error"]["reason"])
    )
    # The row itself stays stored, the column empty.
    assert (
        await pool.fetchval("SELECT company_id FROM contacts WHERE source_id = $1", source_id)
        is None
    )


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("{reference: company, column: company_id, by: salesperson_id}", "is not a text,"),
        ("{reference: company, column: company_id, by: nope}", "'nope' is not a text,"),
        # A boolean compares as 'True' in Python and 'true' in PostgreSQL: never matched.
        ("{reference: company, column: company_id, by: active}", "'active' is not a text,"),
        (
            "{reference: company, column: company_id, source: erp-main, on_missing: stub}",
            "cannot create a placeholder there",
        ),
        ("{column: name, by: email}", "by and source are for references"),
        (
            "{reference: company, column: company_id, by: document, on_missing: stub}",
            "cannot create a placeholder",
        ),
    ],
)
def test_a_reference_by_field_that_cannot_work_is_refused_at_load(
    tmp_path: Path, field: str, message: str
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(
        f"kind: erp\ntables:\n  Cliente:\n    entity: contact\n    key: [id]\n"
        f"    fields:\n      x: {field}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=message):
        load_mapping(path)
