"""The normaliser: nested rows to flat typed rows with stable keys (pure)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ponte.shared import strict_json
from ponte.shared.mapping import default_mapping, load_mapping
from ponte.transform.normalize import RecordRejected, normalize_record
from tests.transform.conftest import raw_event

ERP = default_mapping("erp")


def norm(table: str, row: dict[str, Any], **kwargs: Any) -> Any:
    return normalize_record(raw_event(table, row, source_id="erp", **kwargs), ERP)


DEEP_MAPPING = """
kind: erp
tables:
  Empresa: {entity: company, key: [codigo], fields: {codigo: code}}
  Contatos:
    entity: contact
    key: [codigo]
    parent: {entity: company, column: company_id}
    fields: {nome: name}
  Pedidos:
    entity: order
    key: [codigo]
    parent: {entity: contact, column: contact_id}
    fields: {total: {column: total, type: decimal}}
  Itens:
    entity: order_item
    key: [seq]
    parent: {entity: order, column: order_id}
    fields: {preco: {column: unit_price, type: decimal}}
"""

DEEP_ROW = {
    "codigo": "E1",
    "Contatos": [
        {
            "codigo": "C1",
            "nome": "Ana",
            "Pedidos": [
                {
                    "codigo": "P1",
                    "total": "3,00",
                    "Itens": [{"seq": 1, "preco": "1,00"}, {"seq": 2, "preco": "2,00"}],
                }
            ],
        }
    ],
}


def deep_mapping(tmp_path: Path) -> Any:
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP_MAPPING)
    return load_mapping(path)


def test_children_nest_three_levels_deep_with_parent_keys(tmp_path: Path) -> None:
    record = normalize_record(
        raw_event("Empresa", DEEP_ROW, source_id="erp"), deep_mapping(tmp_path)
    )
    assert [(r.entity, r.source_key, r.depth) for r in record.rows] == [
        ("company", "E1", 0),
        ("contact", "E1/C1", 1),
        ("order", "E1/C1/P1", 2),
        ("order_item", "E1/C1/P1/1", 3),
        ("order_item", "E1/C1/P1/2", 3),
    ]
    item_parent = record.rows[3].references[0]
    assert (item_parent.column, item_parent.target_key) == ("order_id", "E1/C1/P1")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "kind: erp\ntables:\n  E: {entity: contact, key: [c], parent: {entity: order, "
            "column: company_id}}",
            "does not refer to 'order'",
        ),
        (
            "kind: erp\ntables:\n  E: {entity: company, key: [c], parent: {entity: order, "
            "column: company_id}}",
            "not in the entity",
        ),
        (
            "kind: erp\ntables:\n  P: {entity: order, key: [c], fields: {x: {reference: contact, "
            "column: company_id}}}",
            "does not refer to 'contact'",
        ),
        ("kind: erp\ntables:\n  P: {entity: order, key: [c], fields: {x: nope}}", "'nope'"),
        ("kind: erp\ntables:\n  P: {entity: pedido, key: [c]}", "unknown entity"),
        (
            "kind: erp\ntables:\n  P: {entity: order, key: [c], fields: {x: {column: total, "
            "type: money}}}",
            "type",
        ),
    ],
)
def test_invalid_mappings_are_refused_naming_the_table_and_field(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        load_mapping(path)


def test_nested_children_any_form() -> None:
    record = norm(
        "Nota",
        {
            "numero": "N1",
            "Itens nota": [
                {"seq": 1, "produto": "P1", "quantidade": "1", "preco": "1,5"},
                {"seq": 2, "produto": "P2", "quantidade": "2", "preco": "2,5"},
            ],
        },
    )
    assert [r.source_key for r in record.rows] == ["N1", "N1/1", "N1/2"]
    assert record.rows[2].values["unit_price"] == Decimal("2.5")
    assert record.root.child_sets[0].keys == {"N1/1", "N1/2"}
    parent_ref = record.rows[1].references[0]
    assert (parent_ref.column, parent_ref.target_entity, parent_ref.target_key) == (
        "invoice_id",
        "invoice",
        "N1",
    )


def _nested_items(levels: int) -> dict[str, Any]:
    row: dict[str, Any] = {"codigo": "X"}
    inner = row
    for level in range(levels):
        child: dict[str, Any] = {"seq": level}
        inner["Itens pedido"] = [child]  # a list of rows: two JSON levels per child level
        inner = child
    return row


def test_depth_cap_rejects_instead_of_recursing() -> None:
    with pytest.raises(RecordRejected) as caught:
        norm("Pedido", _nested_items(40))
    assert caught.value.code == "too_deep"


def test_child_tables_as_deep_as_the_edge_accepts_are_never_too_deep() -> None:
    """The transform never refuses for depth what ingest accepted (issue #20): the
    deepest child nesting whose envelope passes the edge's decoder is normalised."""
    levels = 0
    while True:
        envelope = {"id": "e", "table": "Pedido", "rows": [_nested_items(levels + 1)]}
        try:
            strict_json.loads(json.dumps(envelope))
        except strict_json.JsonRefused:
            break
        levels += 1
    assert levels >= 30
    try:
        record = norm("Pedido", _nested_items(levels))
    except RecordRejected as rejected:
        assert rejected.code != "too_deep", rejected.reason
    else:
        assert len(record.rows) == levels + 1


def test_standalone_child_event_references_its_parent_by_key() -> None:
    record = norm("Itens pedido", {"pedido": "PED-1", "seq": 3, "preco": "1,00"})
    assert record.root.source_key == "PED-1/3"
    assert record.root.references[0].target_key == "PED-1"


@pytest.mark.parametrize(
    ("row", "field", "code"),
    [
        ({"codigo": "E1", "cnpj": "11.222.333/0001-82"}, "Empresa.cnpj", "invalid_value"),
        ({"codigo": "E1", "ativo": "talvez"}, "Empresa.ativo", "invalid_value"),
        ({"cnpj": "11222333000181"}, "Empresa.codigo", "missing_key"),
        (
            {"codigo": "E1", "segmento": {"$code": {"tabela": "SEG"}}},
            "Empresa.segmento",
            "invalid_value",
        ),
    ],
)
def test_rejections_name_the_field(row: dict[str, Any], field: str, code: str) -> None:
    with pytest.raises(RecordRejected) as caught:
        norm("Empresa", row)
    assert caught.value.field == field and caught.value.code == code
    assert field in caught.value.reason or code == "missing_key"


def test_bad_child_value_rejects_the_record_with_the_child_path() -> None:
    with pytest.raises(RecordRejected) as caught:
        norm("Pedido", {"codigo": "P", "Itens pedido": [{"seq": 1, "preco": "dois"}]})
    assert caught.value.field == "Pedido.Itens pedido[0].preco"


def test_unknown_fields_are_kept_and_reported() -> None:
    record = norm("Empresa", {"codigo": "E1", "cor": "azul", "Filiais": [{"x": 1}]})
    assert record.root.extra == {"cor": "azul", "Filiais": [{"x": 1}]}
    assert record.unmapped == {("Empresa", "cor"), ("Filiais", "*")}


def test_unknown_table_is_rejected_and_reported() -> None:
    with pytest.raises(RecordRejected) as caught:
        norm("Estoque", {"codigo": "1"})
    assert caught.value.code == "unknown_table" and caught.value.unmapped == {("Estoque", "*")}


def test_code_objects_and_plain_codes() -> None:
    record = norm("Empresa", {"codigo": "E1", "segmento": "IND", "vendedor": "", "cnpj": ""})
    code_ref = next(r for r in record.root.references if r.column == "segment_id")
    assert code_ref.target_key == "SEGMENTO:IND" and code_ref.on_missing == "stub"
    assert record.root.values["salesperson_id"] is None  # blank reference clears it
    assert record.root.values["document"] is None
    # Columns the row does not carry are emptied: the newest version is the whole row.
    assert record.root.values["legal_name"] is None


def test_delete_needs_only_the_key() -> None:
    record = norm("Pedido", {"codigo": "PED-1"}, operation="delete")
    assert [r.source_key for r in record.rows] == ["PED-1"] and record.root.values == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=20,
)


@given(
    table=st.sampled_from([*ERP.tables, "Desconhecida"]),
    row=st.dictionaries(
        st.sampled_from(
            [
                "codigo",
                "seq",
                "pedido",
                "tabela",
                "chave",
                "cnpj",
                "total",
                "emissao",
                "Itens pedido",
                "empresa",
                "x",
            ]
        ),
        json_values,
        max_size=6,
    ),
)
def test_any_row_is_normalised_or_rejected_with_a_reason(table: str, row: dict[str, Any]) -> None:
    try:
        record = norm(table, row)
    except RecordRejected as rejection:
        assert rejection.code and rejection.reason
    else:
        assert record.rows and all(r.source_key for r in record.rows)


def test_a_code_sent_to_a_text_column_stores_the_codes_key(tmp_path: Path) -> None:
    """A city sent as a code of the ERP's city list: its key lands in `city`, the row is
    not refused (the default `on_code: key`); `on_code: refuse` keeps the old refusal."""
    city = {"$code": {"tabela": "CIDADE", "chave": "Curitiba"}}
    record = norm("Empresa", {"codigo": "E1", "cidade": city, "uf": "PR"})
    assert record.root.values["city"] == "Curitiba" and record.root.values["state"] == "PR"
    assert not [r for r in record.root.references if r.column == "city"]
    strict = tmp_path / "erp.yaml"
    strict.write_text(
        "kind: erp\ntables:\n  Empresa:\n    entity: company\n    key: [codigo]\n"
        "    fields:\n      cidade: {column: city, on_code: refuse}\n",
        encoding="utf-8",
    )
    with pytest.raises(RecordRejected) as caught:
        normalize_record(
            raw_event("Empresa", {"codigo": "E1", "cidade": city}, source_id="erp"),
            load_mapping(strict),
        )
    assert caught.value.field == "Empresa.cidade"
    assert (
        "a $code (CIDADE:Curitiba) was sent for a field that is not a code" in caught.value.reason
    )


CODE_TABLE_UNDER_ITS_OWN_NAME = """
kind: erp
tables:
  Cadastros auxiliares:
    entity: code
    key: [lista, cod]
    code_table: {list: lista, key: cod, description: nome, parent_key: pai,
                 parent_list: lista_pai}
"""


@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        ({"$code": {"tabela": "UF", "chave": "PR"}}, ("UF:PR", "UF", "PR")),  # names its list
        ("PR", ("CIDADE:PR", "CIDADE", "PR")),  # a plain key: this row's own list
    ],
)
def test_a_code_table_under_any_name_takes_its_parent_as_a_key_or_a_code(
    tmp_path: Path, parent: Any, expected: tuple[str, str, str]
) -> None:
    path = tmp_path / "erp.yaml"
    path.write_text(CODE_TABLE_UNDER_ITS_OWN_NAME, encoding="utf-8")
    row = {"lista": "CIDADE", "cod": "CWB", "nome": "Curitiba", "pai": parent}
    record = normalize_record(
        raw_event("Cadastros auxiliares", row, source_id="erp"), load_mapping(path)
    )
    assert record.root.source_key == "CIDADE:CWB"
    assert record.root.values == {"list_name": "CIDADE", "code": "CWB", "description": "Curitiba"}
    (reference,) = record.root.references
    key, list_name, code = expected
    assert (reference.column, reference.target_key) == ("parent_id", key)
    assert reference.stub_values == {"list_name": list_name, "code": code}
    assert "{" not in reference.target_key  # never the object's text


def test_a_code_tables_version_sequence_is_known_not_extra(tmp_path: Path) -> None:
    """A code table's ``version.field`` orders its rows like any table's, and is neither
    stored in ``extra`` nor reported unmapped (it was, before: the code row's own walk
    knew only the code table's five fields)."""
    path = tmp_path / "erp.yaml"
    path.write_text(
        CODE_TABLE_UNDER_ITS_OWN_NAME + "    version: {field: nummov}\n", encoding="utf-8"
    )
    row = {"lista": "CIDADE", "cod": "CWB", "nome": "Curitiba", "nummov": "0x2A"}
    record = normalize_record(
        raw_event("Cadastros auxiliares", row, source_id="erp"), load_mapping(path)
    )
    assert record.version.seq == 42
    assert record.root.extra == {} and record.unmapped == set()


def test_a_parent_code_that_is_neither_a_key_nor_a_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "erp.yaml"
    path.write_text(CODE_TABLE_UNDER_ITS_OWN_NAME, encoding="utf-8")
    row = {"lista": "CIDADE", "cod": "CWB", "pai": {"uf": "PR"}}
    with pytest.raises(RecordRejected) as caught:
        normalize_record(
            raw_event("Cadastros auxiliares", row, source_id="erp"), load_mapping(path)
        )
    assert caught.value.field == "Cadastros auxiliares.pai"
    assert "a parent code must be a key or a $code object" in caught.value.reason


EXPRESSIONS = """
kind: erp
tables:
  Cliente:
    entity: company
    key: [codigo]
    fields:
      ativo: {column: active, type: boolean, values: {S: "sim", N: "nao"}}
      segmento_txt: {column: trade_name, values: {IND: Indústria, COM: Comércio},
                     unknown: keep, case: upper}
      uf: {column: state, default: SP, case: upper}
      pais: {column: country, default: BR}
      razao: {column: legal_name, required: true}
  Venda:
    entity: order
    key: [numero]
    fields:
      total_br: {column: total, type: decimal, number_format: br}
      emissao: {column: issued_at, type: datetime, date_format: "%d.%m.%Y"}
      moeda: {column: currency, values: {"1": BRL, "2": USD}, unknown: default, default: BRL}
"""


def expressions(tmp_path: Path) -> Any:
    path = tmp_path / "erp.yaml"
    path.write_text(EXPRESSIONS, encoding="utf-8")
    return load_mapping(path)


def test_value_maps_defaults_case_and_required(tmp_path: Path) -> None:
    mapping = expressions(tmp_path)
    row = {"codigo": "C1", "ativo": "N", "segmento_txt": "COM", "uf": "", "razao": "Acme"}
    record = normalize_record(raw_event("Cliente", row, source_id="erp"), mapping)
    values = record.root.values
    assert values["active"] is False  # "N" -> "nao" -> read as a boolean
    assert values["trade_name"] == "COMÉRCIO"  # mapped, then upper-cased
    assert values["state"] == "SP" and values["country"] == "BR"  # empty and absent: default
    kept = normalize_record(
        raw_event("Cliente", {**row, "segmento_txt": "agro"}, source_id="erp"), mapping
    )
    assert kept.root.values["trade_name"] == "AGRO"  # unknown: keep
    with pytest.raises(RecordRejected) as refused:
        normalize_record(raw_event("Cliente", {**row, "ativo": "X"}, source_id="erp"), mapping)
    assert refused.value.field == "Cliente.ativo"
    assert "'X' is not one of the mapped values ['N', 'S']" in refused.value.reason
    with pytest.raises(RecordRejected) as missing:
        normalize_record(raw_event("Cliente", {"codigo": "C2"}, source_id="erp"), mapping)
    assert (missing.value.code, missing.value.field) == ("missing_required", "Cliente.razao")


@pytest.mark.parametrize(
    ("total", "expected"),
    [("1.234", Decimal("1234")), ("1.234,56", Decimal("1234.56")), ("617,28", Decimal("617.28"))],
)
def test_a_fields_own_number_and_date_format(tmp_path: Path, total: str, expected: Decimal) -> None:
    mapping = expressions(tmp_path)
    row = {"numero": "V1", "total_br": total, "emissao": "14.11.2024", "moeda": "9"}
    record = normalize_record(raw_event("Venda", row, source_id="erp"), mapping)
    assert record.root.values["total"] == expected
    issued = record.root.values["issued_at"]
    assert issued.date().isoformat() == "2024-11-14" and str(issued.tzinfo) == "America/Sao_Paulo"
    assert record.root.values["currency"] == "BRL"  # unknown: default


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("{column: legal_name, number_format: br}", "number_format is for decimal or integer"),
        ("{column: total, type: decimal, date_format: '%d'}", "date_format is for date"),
        ("{column: total, type: integer, default: muitos}", "default 'muitos' is not a number"),
        ("{column: legal_name, values: {A: x}, unknown: default}", "unknown: default needs"),
    ],
)
def test_an_expression_that_cannot_work_is_refused_at_load(
    tmp_path: Path, field: str, message: str
) -> None:
    entity = "order" if "total" in field else "company"
    path = tmp_path / "erp.yaml"
    path.write_text(
        f"kind: erp\ntables:\n  T:\n    entity: {entity}\n    key: [k]\n"
        f"    fields:\n      f: {field}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_mapping(path)
    assert str(path) in str(error.value)


COMPUTED = """
kind: erp
tables:
  Pessoa:
    entity: contact
    key: [codigo]
    fields: {email: {column: email, type: email}}
    computed:
      name: {template: "{nome} {meio} {sobrenome}"}
      role: {template: "{cargo}"}
  Filial:
    entity: company
    key: [codigo]
    computed:
      active: {type: boolean, true_when: {field: situacao, in: [A, L]}}
"""


def test_computed_columns_from_a_template_and_a_value_set(tmp_path: Path) -> None:
    path = tmp_path / "erp.yaml"
    path.write_text(COMPUTED, encoding="utf-8")
    mapping = load_mapping(path)
    person = normalize_record(
        raw_event("Pessoa", {"codigo": "P1", "nome": " Ana ", "sobrenome": "Souza"},
                  source_id="erp"), mapping,
    )  # fmt: skip
    assert person.root.values["name"] == "Ana Souza"  # the absent middle name leaves no gap
    assert person.root.values["role"] is None  # every part empty: NULL
    assert person.root.extra == {} and person.unmapped == set()  # read, so not unmapped
    for situacao, active in (("A", True), ("L", True), ("I", False), (None, False)):
        branch = normalize_record(
            raw_event("Filial", {"codigo": "F1", "situacao": situacao}, source_id="erp"), mapping
        )
        assert branch.root.values["active"] is active


def test_a_computed_column_also_mapped_from_a_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "erp.yaml"
    path.write_text(
        "kind: erp\ntables:\n  P:\n    entity: contact\n    key: [c]\n"
        "    fields: {nome: name}\n    computed: {name: {template: '{a} {b}'}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="computed 'name': the column is also mapped"):
        load_mapping(path)


def test_an_object_where_a_value_is_expected_is_refused_naming_table_field_and_value() -> None:
    from ponte.transform.normalize import RecordRejected

    event = raw_event("Empresa", {"codigo": "E1", "razao_social": {"nome": "Acme"}},
                      source_id="erp")  # fmt: skip
    with pytest.raises(RecordRejected) as caught:
        normalize_record(event, ERP)
    assert caught.value.field == "Empresa.razao_social"
    assert "expected text, got a JSON dict {'nome': 'Acme'}" in caught.value.reason
