"""Row filters (``skip`` in a mapping): validated at load, applied by the normaliser, and
counted, recorded and listed by the real transform on real PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from pydantic import SecretStr

from ponte.shared.mapping import Mapping, default_mapping, load_mapping
from ponte.shared.settings import Settings
from ponte.transform.decode import Decoder
from ponte.transform.normalize import RecordSkipped, normalize_record
from ponte.transform.processor import BatchProcessor
from tests.transform.conftest import raw_event
from tests.transform.test_consumer import _Message

INTERNAL = {"field": "tipo", "in": ["I", "X"], "reason": "internal customers"}
NO_DOCUMENT = {"field": "cnpj", "empty": True}
FREE_ITEM = {"field": "preco", "in": ["0", "0,00"], "reason": "gifts"}


def filtered_mapping_document() -> dict[str, Any]:
    """The shipped ERP mapping with skip rules on Empresa and on order items."""
    document = default_mapping("erp").model_dump(by_alias=True, exclude_defaults=True)
    document["tables"]["Empresa"]["skip"] = [INTERNAL, NO_DOCUMENT]
    document["tables"]["Itens pedido"]["skip"] = [FREE_ITEM]
    return document


FILTERED = Mapping.model_validate(filtered_mapping_document())


def company(code: str = "E1", **fields: Any) -> dict[str, Any]:
    return {"codigo": code, "cnpj": "11.222.333/0001-81", "razao_social": "ACME", **fields}


# -- validation at load ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{field: tipo, equals: I}", "skip rule on field 'tipo': unknown operator 'equals'"),
        ("{field: tipo, in: []}", "skip rule on field 'tipo': in needs a non-empty list"),
        ("{field: tipo, not_in: []}", "skip rule on field 'tipo': not_in needs a non-empty"),
        ("{field: tipo, in: I}", "skip rule on field 'tipo': in needs a non-empty list"),
        ("{field: tipo}", "skip rule on field 'tipo': give exactly one of in, not_in, empty"),
        ("{field: tipo, in: [I], empty: true}", "give exactly one of"),
        ("{field: cnpj, empty: false}", "skip rule on field 'cnpj': empty takes only true"),
        ("{in: [I]}", "skip rule: 'field' is required"),
    ],
)
def test_a_bad_skip_rule_is_refused_naming_table_and_field(
    tmp_path: Path, rule: str, message: str
) -> None:
    path = tmp_path / "erp.yaml"
    path.write_text(
        f"kind: erp\ntables:\n  Cliente:\n    entity: company\n    key: [codigo]\n"
        f"    skip:\n      - {rule}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_mapping(path)
    assert "tables.Cliente.skip.0" in str(error.value)  # the table, and which rule


# -- the normaliser (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"tipo": "I"}, {"tipo": " X "}, {"cnpj": ""}, {"cnpj": None}, {"cnpj": "   "}],
)
def test_a_matching_root_row_is_skipped_not_stored(fields: dict[str, Any]) -> None:
    event = raw_event("Empresa", company(**fields), source_id="s")
    with pytest.raises(RecordSkipped) as caught:
        normalize_record(event, FILTERED)
    assert caught.value.skipped.table == "Empresa"
    assert caught.value.skipped.path == "Empresa"


def test_absent_field_is_empty_and_not_in_another_list() -> None:
    row = company()
    del row["cnpj"]
    with pytest.raises(RecordSkipped) as caught:
        normalize_record(raw_event("Empresa", row, source_id="s"), FILTERED)
    assert caught.value.skipped.rule == "cnpj empty"
    assert caught.value.skipped.reason is None


@pytest.mark.parametrize("tipo", ["C", "i", {"v": "I"}, ["I"], 1])
def test_rows_that_match_no_rule_are_stored(tipo: Any) -> None:
    record = normalize_record(raw_event("Empresa", company(tipo=tipo), source_id="s"), FILTERED)
    assert record.root.values["legal_name"] == "ACME"
    assert record.skipped == []
    # The field a rule reads is known to the mapping: it is not reported as unmapped.
    assert ("Empresa", "tipo") not in record.unmapped
    assert "tipo" not in record.root.extra


def test_not_in_compares_trimmed_text_of_numbers_too() -> None:
    document = filtered_mapping_document()
    document["tables"]["Empresa"]["skip"] = [{"field": "status", "not_in": [1, "2"]}]
    mapping = Mapping.model_validate(document)
    kept = normalize_record(raw_event("Empresa", company(status=1), source_id="s"), mapping)
    assert kept.skipped == []
    with pytest.raises(RecordSkipped) as caught:
        normalize_record(raw_event("Empresa", company(status=" 3"), source_id="s"), mapping)
    assert caught.value.skipped.rule == "status not_in [1, 2]"


def test_a_skipped_row_is_checked_before_its_key() -> None:
    """A rule may skip rows the mapping would refuse (no key): skipped, not rejected."""
    with pytest.raises(RecordSkipped):
        normalize_record(raw_event("Empresa", {"tipo": "I"}, source_id="s"), FILTERED)


def test_a_delete_is_never_skipped() -> None:
    """A delete carries only the key: a rule on another field would misread it."""
    event = raw_event("Empresa", {"codigo": "E1"}, source_id="s", operation="delete")
    record = normalize_record(event, FILTERED)
    assert record.root.source_key == "E1" and record.skipped == []


def order_with_items(*prices: str, code: str = "PED-1") -> dict[str, Any]:
    return {
        "codigo": code,
        "empresa": "E1",
        "Itens pedido": [
            {"seq": n, "produto": "P", "quantidade": "1", "preco": price}
            for n, price in enumerate(prices, start=1)
        ],
    }


def test_a_skipped_child_is_left_out_of_its_parents_set() -> None:
    event = raw_event("Pedido", order_with_items("10,00", "0,00", "5,00"), source_id="s")
    record = normalize_record(event, FILTERED)
    assert [row.source_key for row in record.rows] == ["PED-1", "PED-1/1", "PED-1/3"]
    assert record.root.child_sets[0].keys == {"PED-1/1", "PED-1/3"}
    assert [(s.table, s.rule, s.reason, s.path) for s in record.skipped] == [
        ("Itens pedido", "preco in [0, 0,00]", "gifts", "Pedido.Itens pedido[1]")
    ]


# -- through the real transform ----------------------------------------------------------


@pytest.fixture
def processor(
    pool: asyncpg.Pool, base_settings: Settings, tmp_path: Path, source_id: str
) -> BatchProcessor:
    """The real processor, with the filtered mapping as this source's own override."""
    (tmp_path / f"{source_id}.yaml").write_text(
        yaml.safe_dump(filtered_mapping_document(), allow_unicode=True), encoding="utf-8"
    )
    return BatchProcessor(pool, base_settings, Decoder(tmp_path))


def skipped_metric(source_id: str, table: str, rule: str) -> float:
    value = REGISTRY.get_sample_value(
        "ponte_transform_rows_skipped_total", {"source": source_id, "table": table, "rule": rule}
    )
    return value or 0.0


@pytest.mark.integration
async def test_skipped_root_rows_are_counted_recorded_and_listed_not_stored(
    processor: BatchProcessor, pool: asyncpg.Pool, base_settings: Settings, source_id: str
) -> None:
    events = [
        raw_event("Empresa", company("E1", tipo="I"), source_id=source_id),
        raw_event("Empresa", company("E2", tipo="X"), source_id=source_id),
        raw_event("Empresa", company("E3", tipo="C"), source_id=source_id),
        raw_event("Empresa", company("E4", cnpj=""), source_id=source_id),
    ]
    summary = await processor.process([_Message(event) for event in events])

    assert summary.skipped == 3 and summary.rejected == 0
    assert summary.changes == 1  # nothing of a skipped row reaches the outbox
    stored = await pool.fetch(
        "SELECT source_key FROM companies WHERE source_id = $1 ORDER BY 1", source_id
    )
    assert [row["source_key"] for row in stored] == ["E3"]
    recorded = await pool.fetch(
        "SELECT source_table, rule, reason, occurrences, example_event_id FROM skipped_rows "
        "WHERE source_id = $1 ORDER BY rule",
        source_id,
    )
    assert [tuple(row) for row in recorded] == [
        ("Empresa", "cnpj empty", None, 1, events[3].event_id),
        ("Empresa", "tipo in [I, X]", "internal customers", 2, events[1].event_id),
    ]
    assert skipped_metric(source_id, "Empresa", "tipo in [I, X]") == 2

    # Counted on: a later batch adds to the same row.
    await processor.process(
        [_Message(raw_event("Empresa", company("E5", tipo="I"), source_id=source_id))]
    )
    assert (
        await pool.fetchval(
            "SELECT occurrences FROM skipped_rows WHERE source_id = $1 AND rule = 'tipo in [I, X]'",
            source_id,
        )
        == 3
    )

    from ponte.transform.app import create_app

    token = "row-filters-token-0123456789abcdef"
    app = create_app(base_settings.model_copy(update={"ops_token": SecretStr(token)}))
    app.state.pool = pool
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://transform",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        page = (await client.get("/skipped-rows", params={"source_id": source_id})).json()
    assert page["count"] == 2
    assert {(item["rule"], item["occurrences"]) for item in page["items"]} == {
        ("tipo in [I, X]", 3),
        ("cnpj empty", 1),
    }


@pytest.mark.integration
async def test_a_root_row_skipped_later_keeps_what_was_stored(
    processor: BatchProcessor, pool: asyncpg.Pool, source_id: str
) -> None:
    """A filter is not a delete: a record stored before it matched stays as it was."""
    await processor.process([_Message(raw_event("Empresa", company(), source_id=source_id))])
    later = raw_event(
        "Empresa", company(tipo="I", razao_social="NEW"), source_id=source_id, minute=5
    )
    summary = await processor.process([_Message(later)])
    assert summary.skipped == 1 and summary.changes == 0
    stored = await pool.fetchrow(
        "SELECT legal_name, deleted_at FROM companies WHERE source_id = $1", source_id
    )
    assert stored is not None and tuple(stored) == ("ACME", None)


@pytest.mark.integration
async def test_a_child_skipped_later_is_removed_from_its_parents_set(
    processor: BatchProcessor, pool: asyncpg.Pool, source_id: str
) -> None:
    """Children are a set: item 2 stored, then skipped (now a gift), is tombstoned."""
    first = raw_event("Pedido", order_with_items("10,00", "3,00"), source_id=source_id, minute=1)
    await processor.process([_Message(first)])
    second = raw_event("Pedido", order_with_items("10,00", "0,00"), source_id=source_id, minute=2)
    summary = await processor.process([_Message(second)])

    assert summary.skipped == 1
    items = await pool.fetch(
        "SELECT source_key, deleted_at IS NOT NULL AS deleted FROM order_items "
        "WHERE source_id = $1 ORDER BY source_key",
        source_id,
    )
    assert [tuple(row) for row in items] == [("PED-1/1", False), ("PED-1/2", True)]
    assert (
        await pool.fetchval(
            "SELECT occurrences FROM skipped_rows WHERE source_id = $1 AND source_table = $2",
            source_id,
            "Itens pedido",
        )
        == 1
    )
