"""The mapping dry run: the pure check (written, refused, unmapped, skipped, parked), the
``ponte mapping check`` command, and ``POST /sources/{id}/mapping/check`` on the real app
and PostgreSQL, which must write nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from ponte.shared.mapping import Mapping, default_mapping
from ponte.shared.settings import Settings
from ponte.shared.source_kinds import SourceKind
from ponte.transform.dry_run import (
    NOT_CHECKED,
    DryRunReport,
    SampleError,
    check,
    check_references,
    parse_samples,
    render,
)
from tests.transform.conftest import transform_api
from tests.transform.test_row_filters import filtered_mapping_document

ERP = default_mapping("erp")
FILTERED = Mapping.model_validate(filtered_mapping_document())


def envelope(table: str, *rows: dict[str, Any], delivery: str = "d-1") -> dict[str, Any]:
    return {"id": delivery, "occurred_at": "14/11/2024 10:00", "table": table, "rows": list(rows)}


SAMPLES = [
    envelope(
        "Empresa",
        {"codigo": "E1", "cnpj": "11.222.333/0001-81", "razao_social": "ACME", "cor": "azul"},
        {"codigo": "E2", "cnpj": "123"},
        {"codigo": "E3", "cnpj": "11.222.333/0001-81", "tipo": "I"},
    ),
    envelope(
        "Pedido",
        {
            "codigo": "PED-1",
            "empresa": "E1",
            "vendedor": "V07",
            "total": "1.234,56",
            "emissao": "14/11/2024",
            "Itens pedido": [
                {"seq": 1, "produto": "P-9", "quantidade": "2", "preco": "617,28"},
                {"seq": 2, "produto": "P-9", "quantidade": "1", "preco": "0,00"},
            ],
        },
        delivery="d-2",
    ),
]


def run(samples: Any, mapping: Mapping = FILTERED, source_id: str = "erp-x") -> DryRunReport:
    events = parse_samples(samples, SourceKind.ERP, source_id, mapping)
    return check(events, mapping, source_id=source_id, kind="erp", origin="test")


# -- the pure check ------------------------------------------------------------------------


def test_written_rows_carry_entity_key_and_typed_columns() -> None:
    report = run(SAMPLES)
    written = {(row.entity, row.key): row for row in report.written}
    assert set(written) == {("company", "E1"), ("order", "PED-1"), ("order_item", "PED-1/1")}
    company = written[("company", "E1")]
    assert company.columns["document"] == "11222333000181"
    order = written[("order", "PED-1")]
    assert order.columns["total"] == "1234.56" and order.types["total"] == "Decimal"
    assert order.event_id.endswith("/0") and report.events == 4


def test_refused_records_name_the_field_and_the_reason() -> None:
    report = run(SAMPLES)
    assert not report.ok
    [refused] = report.refused
    assert (refused.table, refused.record_key, refused.field) == ("Empresa", "E2", "Empresa.cnpj")
    assert "'123' is not a valid CNPJ" in refused.reason


def test_unmapped_fields_and_skipped_rows_are_listed() -> None:
    report = run(SAMPLES)
    assert [(u.table, u.field, u.occurrences) for u in report.unmapped] == [("Empresa", "cor", 1)]
    assert {(s.table, s.rule, s.path) for s in report.skipped} == {
        ("Empresa", "tipo in [I, X]", "Empresa"),
        ("Itens pedido", "preco in [0, 0,00]", "Pedido.Itens pedido[1]"),
    }


def test_references_without_a_database_are_not_guessed() -> None:
    report = run(SAMPLES)
    order = next(row for row in report.written if row.entity == "order")
    outcomes = {ref.column: ref.outcome for ref in order.references}
    assert outcomes == {"company_id": "in sample", "salesperson_id": NOT_CHECKED}
    assert not report.references_checked
    text = render(report)
    assert "salesperson_id -> salesperson 'V07' (from Pedido.vendedor): not checked" in text
    assert "REFUSED record 'E2' at Empresa.cnpj: invalid_value" in text
    assert "skip Empresa: tipo in [I, X] (internal customers)" in text
    assert "field cor is not mapped: it would land in extra" in text


def test_everything_mapping_is_ok() -> None:
    report = run(envelope("Empresa", {"codigo": "E1", "razao_social": "ACME"}))
    assert report.ok and report.refused == [] and "OK: everything maps" in render(report)


@pytest.mark.parametrize(
    ("sample", "field"),
    [
        (b"", "samples"),
        (b"[]", "samples"),
        (
            json.dumps([envelope("Empresa", {"codigo": "E1"}), {"id": "x"}]),
            "samples[1].occurred_at",
        ),
        (
            json.dumps({"id": "x", "occurred_at": "14/11/2024", "table": "E", "rows": [3]}),
            "samples[0].rows.0",
        ),
        (b'{"id": "x"}\n{not json', "line 2"),
        (b"[1]", "samples[0]"),
    ],
)
def test_a_bad_sample_is_refused_naming_where(sample: Any, field: str) -> None:
    with pytest.raises(SampleError) as error:
        parse_samples(sample, SourceKind.ERP, "erp-x", ERP)
    assert error.value.field == field


def test_json_lines_and_raw_events_are_samples_too() -> None:
    lines = "\n".join(json.dumps(item) for item in SAMPLES).encode()
    events = parse_samples(lines, SourceKind.ERP, "erp-x", ERP)
    assert [event.topic for event in events] == ["Empresa"] * 3 + ["Pedido"]
    again = parse_samples([events[0].model_dump(mode="json")], SourceKind.ERP, "erp-x", ERP)
    assert again == [events[0]]


def test_a_shop_sample_is_its_topic_and_resource() -> None:
    order = {"id": 5, "email": "a@b.com", "line_items": [], "customer": {"id": 9}}
    mapping = default_mapping("shopify")
    events = parse_samples(
        {"topic": "orders/create", "body": order}, SourceKind.SHOPIFY, "shop", mapping
    )
    report = check(events, mapping, source_id="shop", kind="shopify", origin="test")
    assert report.ok, report.refused
    assert any(row.entity == "order" for row in report.written)
    with pytest.raises(SampleError) as error:
        parse_samples({"body": order}, SourceKind.SHOPIFY, "shop", mapping)
    assert error.value.field == "samples[0].topic"


# -- references against the real database, read-only -------------------------------------


@pytest.mark.integration
async def test_references_are_looked_up_found_parked_or_stubbed(
    pool: asyncpg.Pool, source_id: str
) -> None:
    from ponte.transform.normalize import normalize_record
    from ponte.transform.repository.applier import BatchApplier
    from tests.transform.conftest import raw_event

    salesperson = raw_event("Vendedor", {"codigo": "V07", "nome": "Ana"}, source_id=source_id)
    async with pool.acquire() as connection, connection.transaction():
        await BatchApplier(connection).apply([normalize_record(salesperson, ERP)])
    order = {"codigo": "P2", "empresa": "E9", "vendedor": "V07", "Itens pedido": [
        {"seq": 1, "produto": "P-1", "quantidade": "1", "preco": "1"}]}  # fmt: skip
    report = run(envelope("Pedido", order), ERP, source_id)
    async with pool.acquire() as connection:
        await check_references(connection, report)
    outcomes = {ref.column: ref.outcome for row in report.written for ref in row.references}
    assert outcomes == {
        "salesperson_id": "found",
        "company_id": "would park",
        "product_id": "would create a placeholder",
        "order_id": "in sample",
    }
    assert report.references_checked


@pytest.mark.integration
async def test_references_by_another_field_and_source_are_checked_as_they_resolve(
    pool: asyncpg.Pool, source_id: str, tmp_path: Path
) -> None:
    from ponte.shared.mapping import load_mapping
    from ponte.transform.normalize import normalize_record
    from ponte.transform.repository.applier import BatchApplier
    from tests.transform.conftest import raw_event

    erp = f"{source_id}-erp"
    companies = [
        raw_event("Empresa", {"codigo": code, "cnpj": cnpj}, source_id=erp)
        for code, cnpj in (("E1", "11222333000181"), ("E2", "11444777000161"),
                           ("E3", "11444777000161"))
    ]  # fmt: skip
    async with pool.acquire() as connection, connection.transaction():
        await BatchApplier(connection).apply([normalize_record(e, ERP) for e in companies])
    path = tmp_path / "shop.yaml"
    path.write_text(
        "kind: erp\ntables:\n  Cliente:\n    entity: contact\n    key: [id]\n    fields:\n"
        f"      cnpj: {{reference: company, column: company_id, by: document, type: document, "
        f"source: {erp}}}\n",
        encoding="utf-8",
    )
    shop = load_mapping(path)
    samples = envelope(
        "Cliente",
        {"id": "K1", "cnpj": "11.222.333/0001-81"},
        {"id": "K2", "cnpj": "11.444.777/0001-61"},
        {"id": "K3", "cnpj": "11.444.777/0002-42"},
    )
    report = run(samples, shop, source_id)
    async with pool.acquire() as connection:
        await check_references(connection, report)
    outcomes = {row.key: row.references[0].outcome for row in report.written}
    assert outcomes["K1"] == "found"  # in the ERP's source, by its CNPJ's digits
    assert outcomes["K2"].startswith("would park: 2 rows have it")
    assert outcomes["K3"] == "would park"
    target = report.written[0].references[0].target()
    assert target == f"company document '11222333000181' of source '{erp}'"


async def add_source(pool: asyncpg.Pool, source_id: str) -> None:
    await pool.execute(
        "INSERT INTO sources (id, kind, active, display_name, secrets, allowed_cidrs, tables, "
        "created_at, updated_at) VALUES ($1, 'erp', true, '', '[]', '[]', '[]', now(), now())",
        source_id,
    )


# -- the command -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_the_command_names_the_field_a_broken_mapping_refuses(tmp_path: Path) -> None:
    from tests.test_cli import ponte

    broken = filtered_mapping_document()
    broken["tables"]["Pedido"]["fields"]["emissao"] = {
        "column": "issued_at",
        "type": "datetime",
        "date_format": "%Y-%m-%d",  # the ERP writes 14/11/2024: this refuses it
    }
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken, allow_unicode=True))
    (tmp_path / "samples.json").write_text(json.dumps(SAMPLES[1:]))
    nowhere = {"PONTE_DATABASE_URL": "postgresql+asyncpg://postgres:pw@127.0.0.1:9/postgres"}
    args = ["mapping", "check", "erp-x", "--sample", "samples.json", "--kind", "erp"]

    code, out, err = await ponte(*args, cwd=tmp_path, env=nowhere)
    assert code == 0, out + err  # the shipped mapping takes it
    assert "not checked: no database" in out and "pw" not in out + err

    code, out, err = await ponte(*args, "--mapping", "broken.yaml", cwd=tmp_path, env=nowhere)
    assert code == 1, out + err
    assert "REFUSED record 'PED-1' at Pedido.emissao: invalid_value: field Pedido.emissao:" in out
    assert "'%Y-%m-%d'" in out  # the reason: the format it does not fit
    assert "Traceback" not in err

    code, out, _ = await ponte(
        *args, "--mapping", "broken.yaml", "--json", cwd=tmp_path, env=nowhere
    )
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert report["refused"][0]["field"] == "Pedido.emissao"

    invalid = filtered_mapping_document()
    invalid["tables"]["Empresa"]["skip"] = [{"field": "tipo", "in": []}]
    (tmp_path / "invalid.yaml").write_text(yaml.safe_dump(invalid, allow_unicode=True))
    code, _, err = await ponte(*args, "--mapping", "invalid.yaml", cwd=tmp_path, env=nowhere)
    assert code == 1 and "tables.Empresa.skip.0" in err and "field 'tipo'" in err

    code, _, err = await ponte(*args[:-2], cwd=tmp_path, env=nowhere)  # no --kind, no database
    assert code == 2 and "pass --kind" in err and "pw" not in err


@pytest.mark.integration
async def test_the_command_reads_the_sources_kind_and_references_from_postgresql(
    tmp_path: Path, base_settings: Settings, pool: asyncpg.Pool, source_id: str
) -> None:
    from tests.test_cli import ponte

    await add_source(pool, source_id)
    (tmp_path / "samples.json").write_text(json.dumps(SAMPLES[1:]))
    env = {"PONTE_DATABASE_URL": base_settings.database_url}
    code, out, err = await ponte(
        "mapping", "check", source_id, "--sample", "samples.json", cwd=tmp_path, env=env
    )
    assert code == 0, out + err
    assert f"source {source_id} (erp), mapping: shipped default erp.yaml" in out
    assert "company_id -> company 'E1' (from Pedido.empresa): would park" in out
    code, _, err = await ponte(
        "mapping", "check", "nobody", "--sample", "samples.json", cwd=tmp_path, env=env
    )
    assert code == 2 and "no source 'nobody'" in err


# -- the endpoint ------------------------------------------------------------------------------

TOKEN = "dry-run-token-0123456789abcdefgh"
WRITTEN_TABLES = (
    "companies",
    "orders",
    "order_items",
    "products",
    "codes",
    "parked_references",
    "skipped_rows",
    "unmapped_fields",
    "transform_rejections",
)


@pytest.fixture
async def client(base_settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with transform_api(base_settings, pool, TOKEN) as client:
        yield client


async def rows_of(pool: asyncpg.Pool, source_id: str) -> dict[str, int]:
    return {
        table: await pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE source_id = $1",
            source_id,
        )
        for table in WRITTEN_TABLES
    }


@pytest.mark.integration
async def test_the_endpoint_checks_a_mapping_and_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, source_id: str
) -> None:
    await add_source(pool, source_id)
    path = f"/sources/{source_id}/mapping/check"
    before = await rows_of(pool, source_id)

    answer = await client.post(path, json={"samples": SAMPLES})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] is False and report["references_checked"] is True
    assert report["refused"][0]["field"] == "Empresa.cnpj"
    assert report["skipped"] == []  # the source's own mapping has no filters

    candidate = yaml.safe_dump(filtered_mapping_document(), allow_unicode=True)
    tried = (await client.post(path, json={"samples": SAMPLES, "mapping": candidate})).json()
    assert tried["mapping"] == "the request's mapping (not saved)"
    assert {s["rule"] for s in tried["skipped"]} == {"tipo in [I, X]", "preco in [0, 0,00]"}

    assert await rows_of(pool, source_id) == before == dict.fromkeys(WRITTEN_TABLES, 0)

    bad = await client.post(
        path, json={"samples": SAMPLES, "mapping": "kind: erp\ntables:\n  E: {entity: x, key: [c]}"}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "body.mapping"
    assert "unknown entity 'x'" in bad.json()["message"]
    worse = await client.post(path, json={"samples": SAMPLES, "mapping": "a: [b"})
    assert worse.status_code == 422 and worse.json()["field"] == "body.mapping"
    sample = await client.post(path, json={"samples": [{"id": "x", "table": "E", "rows": [{}]}]})
    assert sample.status_code == 422 and sample.json()["field"] == "body.samples[0].occurred_at"
    unknown = await client.post("/sources/nobody/mapping/check", json={"samples": SAMPLES})
    assert unknown.status_code == 404
    anonymous = await client.post(path, json={"samples": SAMPLES}, headers={"Authorization": ""})
    assert anonymous.status_code == 401
