"""``POST /files/{source_id}``: CSV and Excel sheets through the real ingest app, broker and
PostgreSQL, checking the per-row report and the events that land on the raw topic."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from openpyxl import Workbook  # type: ignore[import-untyped]  # no stubs shipped
from pydantic import SecretStr

from ponte.ingest.file_drops import XLSX_TYPE, check_row, read_csv, sniff_delimiter
from ponte.shared.rejections import Rejection
from ponte.shared.settings import Settings
from tests.conftest import RunningIngest, event_of, read_topic, serve_ingest, write_sources

pytestmark = pytest.mark.integration

SECRET = "whsec_" + "ZmlsZS1kcm9wLXRlc3Qtc2VjcmV0"
OPS_TOKEN = "ops-token-for-file-drop-tests"
SOURCE = f"files-{uuid.uuid4().hex[:6]}"
SHOP = f"files-shop-{uuid.uuid4().hex[:6]}"
AUTH = {"Authorization": f"Bearer {SECRET}"}

CSV_LATIN1 = (
    "codigo;razao_social;cnpj;email;ativo\r\n"
    "E10;Pão de Açúcar Comércio Ltda;11.222.333/0001-81;compras@pao.com.br;S\r\n"
    "E11;Padaria São João;;contato@saojoao.com.br;N\r\n"
    ";;;;\r\n"
    ";Sem Código Ltda;;;S\r\n"
    "E14;Empresa Inválida;11.111.111/1111-11;não-é-email;talvez\r\n"
    'E15;"Açougue; Mercearia";;;S\r\n'
    ";;;;\r\n"
).encode("latin-1")


@pytest.fixture
async def ingest(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningIngest]:
    sources = write_sources(
        tmp_path_factory.mktemp("sources") / "sources.yaml",
        [
            {
                "id": SOURCE,
                "kind": "erp",
                "secrets": [SECRET],
                "tables": ["Empresa", "Pedido", "Contato", "Clientes antigos"],
            },
            {"id": SHOP, "kind": "shopify", "secrets": [SECRET]},
        ],
    )
    running = settings.model_copy(
        update={
            "sources_file": sources,
            "max_body_bytes": 64 * 1024,
            "ops_token": SecretStr(OPS_TOKEN),
        }
    )
    async for server in serve_ingest(running):
        yield server


def _files_url(ingest: RunningIngest, source_id: str = SOURCE) -> str:
    return f"{ingest.url}/files/{source_id}"


async def test_a_latin1_csv_with_semicolons_becomes_events_and_bad_rows_are_reported(
    ingest: RunningIngest,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            _files_url(ingest),
            params={"table": "Empresa"},
            content=CSV_LATIN1,
            headers={**AUTH, "Content-Type": "text/csv"},
        )
    assert response.status_code == 202, response.text
    report = response.json()
    assert report["accepted"] == 3
    assert report["rejected"] == [
        {"row": 4, "field": None, "reason": "empty row"},
        {"row": 5, "field": "codigo", "reason": "key field is empty"},
        {"row": 6, "field": "cnpj", "reason": report["rejected"][2]["reason"]},
        {"row": 6, "field": "email", "reason": report["rejected"][3]["reason"]},
        {"row": 6, "field": "ativo", "reason": report["rejected"][4]["reason"]},
    ]
    assert "not a valid document" in report["rejected"][2]["reason"]
    assert "e-mail" in report["rejected"][3]["reason"]
    settings = ingest.settings
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=3)
    events = sorted((event_of(message) for message in messages), key=lambda e: e["index"])
    assert [message.key for message in messages if message.key] and {
        message.key for message in messages
    } == {f"{SOURCE}/Empresa/{code}".encode() for code in ("E10", "E11", "E15")}
    assert [(e["index"], e["record_key"], e["topic"]) for e in events] == [
        (2, "E10", "Empresa"),
        (3, "E11", "Empresa"),
        (7, "E15", "Empresa"),
    ]
    assert events[0]["payload"] == {
        "codigo": "E10",
        "razao_social": "Pão de Açúcar Comércio Ltda",
        "cnpj": "11.222.333/0001-81",
        "email": "compras@pao.com.br",
        "ativo": "S",
    }
    assert events[1]["payload"]["cnpj"] is None  # an empty cell is an empty value
    assert events[2]["payload"]["razao_social"] == "Açougue; Mercearia"  # quoted delimiter
    assert len({e["delivery_id"] for e in events}) == 1


def _xlsx(rows: list[list[Any]]) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Pedidos"
    for row in rows:
        sheet.append(row)
    for _ in range(3):
        sheet.append([None, None, None])  # formatted but empty rows Excel leaves behind
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


async def test_an_excel_sheet_becomes_events_with_typed_cells_and_bad_rows_reported(
    ingest: RunningIngest,
) -> None:
    workbook = _xlsx(
        [
            ["codigo", "empresa", "emissao", "total", "moeda"],
            [1001, "000123", datetime(2024, 11, 14), 1234.56, "BRL"],
            ["PED-1002", "000124", "14/11/2024 10:30", "1.234,56", "BRL"],
            ["PED-1003", "000125", "31/02/2024", "abc", "BRL"],
            [None, "000126", datetime(2024, 11, 15, 9, 30), 10, "BRL"],
            ["PED-1005", "000127", None, None, None, "extra cell"],
        ]
    )
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            _files_url(ingest),
            params={"table": "Pedido"},
            files={"file": ("pedidos.xlsx", workbook, XLSX_TYPE)},
            headers=AUTH,
        )
    assert response.status_code == 202, response.text
    report = response.json()
    assert report["accepted"] == 2
    rejected = [(r["row"], r["field"]) for r in report["rejected"]]
    assert rejected == [(4, "emissao"), (4, "total"), (5, "codigo"), (6, None)]
    assert "not a valid datetime" in report["rejected"][0]["reason"]
    assert "6 cells but the header has 5 columns" in report["rejected"][3]["reason"]
    settings = ingest.settings
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=2)
    events = sorted((event_of(message) for message in messages), key=lambda e: e["index"])
    assert [e["record_key"] for e in events] == ["1001", "PED-1002"]
    assert events[0]["payload"] == {
        "codigo": 1001,  # a whole number stays a number, not 1001.0
        "empresa": "000123",  # text keeps its leading zeros
        "emissao": "2024-11-14",
        "total": 1234.56,
        "moeda": "BRL",
    }


async def test_the_same_file_twice_gives_the_same_event_ids(ingest: RunningIngest) -> None:
    body = b"codigo;razao_social\nE20;Vinte\n"
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(2):
            response = await client.post(
                _files_url(ingest),
                params={"table": "Empresa"},
                content=body,
                headers={"Authorization": f"Bearer {OPS_TOKEN}", "Content-Type": "text/csv"},
            )
            assert response.status_code == 202, response.text
    settings = ingest.settings
    messages = await read_topic(settings.kafka_bootstrap, settings.raw_topic, expect=2)
    assert len(messages) == 2
    assert len({event_of(message)["event_id"] for message in messages}) == 1


async def test_file_drops_refuse_what_they_cannot_take(ingest: RunningIngest) -> None:
    url = _files_url(ingest)
    csv_headers = {**AUTH, "Content-Type": "text/csv"}
    body = b"codigo;nome\nV1;Ana\n"
    async with httpx.AsyncClient(timeout=10) as client:
        no_token = await client.post(url, params={"table": "Vendedor"}, content=body)
        wrong = await client.post(
            url,
            params={"table": "Empresa"},
            content=body,
            headers={"Authorization": "Bearer wrong", "Content-Type": "text/csv"},
        )
        not_allowed = await client.post(
            url, params={"table": "Vendedor"}, content=body, headers=csv_headers
        )
        unknown = await client.post(
            url, params={"table": "Clientes antigos"}, content=body, headers=csv_headers
        )
        no_table = await client.post(url, content=body, headers=csv_headers)
        too_large = await client.post(
            url, params={"table": "Empresa"}, content=b"x" * (65 * 1024), headers=csv_headers
        )
        shop = await client.post(
            _files_url(ingest, SHOP), params={"table": "Empresa"}, content=body, headers=AUTH
        )
        only_bad = await client.post(
            url, params={"table": "Empresa"}, content=b"codigo;nome\n;Ana\n", headers=csv_headers
        )
        pdf = await client.post(
            url,
            params={"table": "Empresa"},
            content=b"%PDF-1.4",
            headers={**AUTH, "Content-Type": "application/pdf"},
        )
    assert (no_token.status_code, no_token.json()["field"]) == (401, "authorization")
    assert wrong.status_code == 401
    assert (not_allowed.status_code, not_allowed.json()["field"]) == (403, "table")
    assert (unknown.status_code, unknown.json()["field"]) == (422, "table")
    assert (no_table.status_code, no_table.json()["field"]) == (422, "table")
    assert too_large.status_code == 413
    assert shop.status_code == 404
    assert only_bad.status_code == 422
    assert only_bad.json()["rejected"] == [
        {"row": 2, "field": "codigo", "reason": "key field is empty"}
    ]
    assert pdf.status_code == 415


def test_the_delimiter_is_sniffed_from_the_header() -> None:
    assert sniff_delimiter("codigo;nome;total\nE1;Ana;1.234,56\n") == ";"
    assert sniff_delimiter("codigo,nome\nE1,Ana\n") == ","
    assert sniff_delimiter("codigo\tnome\n") == "\t"
    header, rows = read_csv(b'codigo,total\nE1,"1,5"\n', "text/csv; charset=utf-8")
    assert header == ["codigo", "total"]
    assert rows == [(2, ["E1", "1,5"])]
    with pytest.raises(Rejection, match="names 'codigo' twice"):
        read_csv(b"codigo;codigo\n1;2\n", None)


def test_a_nul_in_a_cell_or_a_column_name_is_a_row_problem_not_an_event() -> None:
    """The transform refuses NUL (it used to strip it, merging "X\\0Y" with "XY"), so a
    file's row carrying one is reported by the drop, naming the column."""
    for header, cells, mentions in [
        (["codigo", "nome"], ["E1", "X\x00Y"], "$.nome"),
        (["codigo", "no\x00me"], ["E1", "Ana"], '$["no\\u0000me"]'),
    ]:
        row, problems = check_row(2, header, cells, ["codigo"], {})
        assert row is None
        assert [p.row for p in problems] == [2]
        assert "NUL" in problems[0].reason and mentions in problems[0].reason
    row, problems = check_row(3, ["codigo", "nome"], ["E2", "Ana\tMaria"], ["codigo"], {})
    assert row == {"codigo": "E2", "nome": "Ana\tMaria"} and problems == []
