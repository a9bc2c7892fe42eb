"""Issue #20's hostile bodies, one named regression test each, against the real ingest
(real HTTP, broker and PostgreSQL): every one is answered 4xx naming the problem and
where it is, and recorded in the history (``webhook_requests``), or, where the input is
legal, accepted losslessly. Before the strict decoder these were 500s missing from the
history, 202s dead-lettered later, or values silently nulled, stripped or merged."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from ponte.dev import tail_line
from ponte.shared.settings import Settings
from tests.conftest import RunningIngest, event_of, read_topic, serve_ingest, unique_topic
from tests.conftest import write_sources as write_sources_file
from tests.ingest.test_webhooks import ERP_SECRET, envelope, erp_headers, history_row

pytestmark = pytest.mark.integration

SOURCE = "hostile-erp"
BROKEN = "hostile-broken"


@pytest.fixture(scope="module")
async def ingest(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningIngest]:
    folder = tmp_path_factory.mktemp("hostile")
    sources = write_sources_file(
        folder / "sources.yaml",
        [
            {"id": SOURCE, "kind": "erp", "secrets": [ERP_SECRET]},
            {"id": BROKEN, "kind": "erp", "secrets": [ERP_SECRET]},
        ],
    )
    mappings = folder / "mappings"
    mappings.mkdir()
    # A mapping file an operator broke: reading it fails inside intake, unforeseen.
    (mappings / f"{BROKEN}.yaml").write_text("tables: [unclosed\n", encoding="utf-8")
    settings = base_settings.model_copy(
        update={"raw_topic": unique_topic(), "sources_file": sources, "mappings_dir": mappings}
    )
    async for running in serve_ingest(settings):
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def pedido(*rows: str, table: str = '"Pedido"', event_id: str | None = None) -> bytes:
    """A Pedido upsert written as text, so a row can hold what json.dumps cannot write
    (duplicate keys, NaN, 1e999, a 4,301-digit integer)."""
    identifier = json.dumps(event_id or f"evt-{uuid.uuid4().hex}")
    return (
        f'{{"id": {identifier}, "occurred_at": "2024-11-14T12:01:32-03:00", '
        f'"operation": "upsert", "table": {table}, "rows": [{", ".join(rows)}]}}'
    ).encode()


def nested_field(depth: int) -> str:
    """A row whose field ``v`` nests ``depth`` arrays deep."""
    return '{"codigo": "PED-1", "v": ' + "[" * depth + "1" + "]" * depth + "}"


def child_tables(levels: int) -> str:
    """A row with child tables (lists of rows) nested ``levels`` deep."""
    row = '{"seq": 0}'
    for level in range(levels):
        row = f'{{"seq": {level}, "Itens pedido": [{row}]}}'
    return '{"codigo": "PED-1", "Itens pedido": [' + row + "]}"


async def send_and_check(
    ingest: RunningIngest,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    body: bytes,
    *,
    status: int,
    code: str,
    mentions: list[str],
    source_id: str = SOURCE,
) -> asyncpg.Record:
    """Post the signed body; check the answer and its history row; return the row."""
    since = datetime.now(UTC)
    response = await client.post(ingest.webhook(source_id), content=body, headers=erp_headers(body))
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["error"] == code, problem
    for mention in mentions:
        assert mention in problem["message"], problem
    row = await history_row(pool, source_id, status=status, since=since)
    assert row["reason"] == code and row["outcome"] in ("rejected", "error")
    assert row["response_body"] == problem
    assert row["body"] == body or row["body_sha256"]  # the raw body, or its digest
    return row


@pytest.mark.parametrize("depth", [200, 254, 255, 1000])
async def test_a_row_field_nested_200_to_1000_deep_is_422_too_deep(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool, depth: int
) -> None:
    """Was: 500 and no history row (255-1000), or 202 then a dead letter (200-254)."""
    await send_and_check(
        ingest,
        client,
        pool,
        pedido(nested_field(depth)),
        status=422,
        code="too_deep",
        mentions=["deeper than 64 levels"],
    )


async def test_child_tables_nested_300_deep_are_422_too_deep(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await send_and_check(
        ingest,
        client,
        pool,
        pedido(child_tables(300)),
        status=422,
        code="too_deep",
        mentions=['$.rows[0]["Itens pedido"][0]', "deeper than 64 levels"],
    )


async def test_an_integer_of_4301_digits_is_422_number_too_large(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Was: Python's int limit, a ValueError, a 500 and no history row."""
    body = pedido('{"codigo": "PED-1", "total": ' + "9" * 4301 + "}")
    await send_and_check(
        ingest,
        client,
        pool,
        body,
        status=422,
        code="number_too_large",
        mentions=["$.rows[0].total", "4301 digits"],
    )


async def test_a_lone_surrogate_is_422_lone_surrogate(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Was: a 500 and no history row."""
    body = pedido('{"codigo": "PED-1", "nome": "Jo\\ud800o"}')
    await send_and_check(
        ingest,
        client,
        pool,
        body,
        status=422,
        code="lone_surrogate",
        mentions=["$.rows[0].nome", "\\ud800"],
    )


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity"])
@pytest.mark.parametrize("where", ["value", "key"])
async def test_non_finite_numbers_are_422_as_a_value_and_as_a_key(
    ingest: RunningIngest,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    literal: str,
    where: str,
) -> None:
    """Was: stored as NULL (orders.total) without a word; as the record key (``codigo``)
    it became ``inf`` and was refused later as a missing key."""
    row = (
        f'{{"codigo": "PED-1", "total": {literal}}}'
        if where == "value"
        else f'{{"codigo": {literal}, "total": "1,00"}}'
    )
    path = "$.rows[0].total" if where == "value" else "$.rows[0].codigo"
    await send_and_check(
        ingest,
        client,
        pool,
        pedido(row),
        status=422,
        code="non_finite_number",
        mentions=[path, literal],
    )


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (pedido('{"codigo": "X\\u0000Y"}'), "$.rows[0].codigo"),
        (pedido('{"codigo": "PED-1", "nome": "X\\u0000Y"}'), "$.rows[0].nome"),
        (pedido('{"codigo": "PED-1", "no\\u0000me": "Ana"}'), '$.rows[0]["no\\u0000me"]'),
        (pedido('{"codigo": "PED-1"}', event_id="evt\u0000-1"), "$.id"),
        (pedido('{"codigo": "PED-1"}', table='"Ped\\u0000ido"'), "$.table"),
    ],
    ids=["record-key", "value", "field-name", "envelope-id", "table"],
)
async def test_nul_anywhere_is_422_nul_character(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool, body: bytes, path: str
) -> None:
    """Was: NUL stripped, so "X\\u0000Y" and "XY" merged into one CRM row; in the
    envelope id or table, a 202 whose history row and receipt were lost (deduplication
    broken after a restart)."""
    await send_and_check(
        ingest,
        client,
        pool,
        body,
        status=422,
        code="nul_character",
        mentions=[path, "NUL"],
    )


@pytest.mark.parametrize(
    ("body", "path", "key"),
    [
        (
            pedido('{"codigo": "PED-1"}').replace(
                b'"operation": "upsert",', b'"operation": "upsert", "operation": "delete",'
            ),
            "$",
            '"operation"',
        ),
        (pedido('{"codigo": "PED-1", "total": "1,00", "total": "2,00"}'), "$.rows[0]", '"total"'),
        (
            pedido('{"codigo": "PED-1", "Itens pedido": [{"seq": 1, "seq": 2}]}'),
            '$.rows[0]["Itens pedido"][0]',
            '"seq"',
        ),
    ],
    ids=["operation-upsert-then-delete", "row-field", "child-row"],
)
async def test_duplicate_keys_are_422_duplicate_key(
    ingest: RunningIngest,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    body: bytes,
    path: str,
    key: str,
) -> None:
    """Was: the last one won silently (an upsert became a delete)."""
    row = await send_and_check(
        ingest,
        client,
        pool,
        body,
        status=422,
        code="duplicate_key",
        mentions=[path, key, "more than once"],
    )
    assert row["event_id"] is None  # nothing was accepted


async def test_a_table_name_with_a_newline_is_accepted_and_cannot_forge_a_console_line(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Legal input, so stored losslessly (the table name as sent, in the raw event and
    the history); the `make dev` console escapes it instead of printing a forged line."""
    since = datetime.now(UTC)
    table = "Pedido\n[raw]    evt_forged hostile-erp Pedido delete key=PED-1"
    body = json.dumps(envelope(table=table)).encode()
    response = await client.post(ingest.webhook(SOURCE), content=body, headers=erp_headers(body))
    assert response.status_code == 202, response.text
    row = await history_row(pool, SOURCE, status=202, since=since)
    assert row["tables"] == [table] and row["event_id"] == response.json()["event_id"]
    messages = await read_topic(
        ingest.settings.kafka_bootstrap, ingest.settings.raw_topic, expect=1
    )
    (mine,) = [m for m in messages if event_of(m)["delivery_id"] == response.json()["event_id"]]
    assert event_of(mine)["topic"] == table
    line = tail_line(True, mine.value)
    assert "\n" not in line and "Pedido\\x0a[raw]" in line


async def test_an_unforeseen_failure_is_a_recorded_500(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """A broken mapping file makes intake fail in a way no rule foresaw: the sender gets
    a JSON 500 and the request its history row (it used to escape unrecorded)."""
    body = json.dumps(envelope()).encode()
    await send_and_check(
        ingest,
        client,
        pool,
        body,
        status=500,
        code="internal_error",
        mentions=["nothing was accepted"],
        source_id=BROKEN,
    )


async def test_distinct_keys_stay_distinct(
    ingest: RunningIngest, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """ "XY" is accepted with its key as sent; "X\\u0000Y" is refused, never merged."""
    plain = pedido('{"codigo": "XY"}')
    response = await client.post(ingest.webhook(SOURCE), content=plain, headers=erp_headers(plain))
    assert response.status_code == 202
    await send_and_check(
        ingest,
        client,
        pool,
        pedido('{"codigo": "X\\u0000Y"}'),
        status=422,
        code="nul_character",
        mentions=["$.rows[0].codigo"],
    )
