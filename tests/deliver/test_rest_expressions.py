"""Property expressions of ``kind: rest`` objects (``ponte.deliver.expressions``): each
expression alone (pure), the refusals at load naming ``objects.<entity>.properties.<prop>``,
and a company delivered through the real deliver consumer to the REST stand-in
(``tests/stand_ins/rest_crm.py``, a local stand-in of a REST CRM, not a real one)."""

from __future__ import annotations

import re
import textwrap
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from ponte.deliver.connectors.registry import load_targets
from ponte.deliver.expressions import PropertyExpression, PropertyRefused, country_code, to_e164
from ponte.shared.settings import Settings
from tests.conftest import read_topic
from tests.deliver.conftest import count_deliveries, produce, run_deliver
from tests.deliver.test_rest_connector import (  # noqa: F401  (fixtures used by name)
    DOC,
    change,
    cnpj,
    credentials,
    crm,
    doc_entry,
    doc_target,
    organisations,
    settings,
)
from tests.stand_ins.rest_crm import RestCrmState


def value(expression: dict[str, Any], **row: Any) -> Any:
    return PropertyExpression.model_validate(expression).evaluate(row, "properties.p")


# --- each expression, pure ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "row", "expected"),
    [
        ({"column": "a"}, {"a": "x"}, "x"),
        ({"template": "{a}", "split": "first"}, {"a": "Maria da Silva"}, "Maria"),
        ({"template": "{a}", "split": "rest"}, {"a": "Maria da Silva"}, "da Silva"),
        ({"template": "{a}", "split": "last"}, {"a": "Maria da Silva"}, "Silva"),
        ({"template": "{a}", "split": "rest"}, {"a": "Maria"}, None),
        ({"column": "a", "split": {"separator": "-", "part": "last"}}, {"a": "ERP-0042"}, "0042"),
        ({"column": "a", "split": {"separator": "-", "part": "rest"}}, {"a": "a-b-c"}, "b-c"),
        ({"template": "{a}, {b} - {c}"}, {"a": "Rua X", "b": "Recife", "c": "PE"},
         "Rua X, Recife - PE"),
        ({"template": "{a} {b}"}, {"a": None, "b": None}, None),
        ({"column": "a", "values": {"AP": "won"}}, {"a": " AP "}, "won"),
        ({"column": "a", "values": {"1": "won"}}, {"a": 1}, "won"),
        ({"column": "a", "values": {"AP": "won"}, "unknown": "keep"}, {"a": "ZZ"}, "ZZ"),
        ({"column": "a", "values": {"AP": "won"}, "unknown": "default", "default": "open"},
         {"a": "ZZ"}, "open"),
        ({"column": "a", "default": "open"}, {"a": ""}, "open"),
        ({"column": "a", "phone": "E164", "region": "BR"}, {"a": "(11) 98765-4321"},
         "+5511987654321"),
        ({"column": "a", "phone": "E164", "region": "BR"}, {"a": "+1 650 253 0000"},
         "+16502530000"),
        ({"column": "a", "phone": "E164", "region": "BR"}, {"a": None}, None),
        ({"column": "a", "country": "alpha2"}, {"a": "Brasil"}, "BR"),
        ({"column": "a", "country": "alpha2"}, {"a": "brazil"}, "BR"),
        ({"column": "a", "country": "alpha2"}, {"a": "BRA"}, "BR"),
        ({"column": "a", "country": "alpha3"}, {"a": "BR"}, "BRA"),
        ({"column": "a", "required": True}, {"a": "m@x.io"}, "m@x.io"),
    ],
)  # fmt: skip
def test_each_expression(expression: dict[str, Any], row: dict[str, Any], expected: Any) -> None:
    assert value(expression, **row) == expected


@pytest.mark.parametrize(
    ("expression", "row", "reason"),
    [
        ({"column": "a", "required": True}, {"a": "  "}, "no value for 'a'"),
        ({"template": "{a} {b}", "required": True}, {}, "no value for template"),
        ({"column": "a", "values": {"AP": "won"}}, {"a": "ZZ"}, "'ZZ' is not one of the mapped"),
        ({"column": "a", "phone": "E164", "region": "BR"}, {"a": "12"}, "'12' is not a valid"),
        ({"column": "a", "phone": "E164", "region": "BR"}, {"a": "call me"}, "not a valid"),
        ({"column": "a", "country": "alpha2"}, {"a": "Atlantis"}, "'Atlantis' is not a country"),
    ],
)  # fmt: skip
def test_unconvertible_values_are_refused_naming_the_property(
    expression: dict[str, Any], row: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PropertyRefused, match=re.escape(reason)) as error:
        value(expression, **row)
    assert str(error.value).startswith("properties.p: ")
    with pytest.raises(PropertyRefused):
        value(expression, **row)


def test_helpers_never_guess() -> None:
    assert to_e164("011 98765 4321", "BR") == "+5511987654321"  # trunk prefix dropped
    with pytest.raises(PropertyRefused):
        country_code("Braz", "alpha2")  # a prefix is not a country


# --- refused at load ----------------------------------------------------------------------


def load_with(tmp_path: Path, **company: Any) -> None:
    entry = doc_entry()
    entry["objects"]["company"].update(company)
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": [entry]}), encoding="utf-8")
    load_targets(path)


PLAIN = {"legal_name": "name", "document": "custom_fields.cnpj"}


@pytest.mark.parametrize(
    ("prop", "expression", "reason"),
    [
        ("p", {"column": "nope"}, "'nope' is not a column of company"),
        ("p", {"template": "{legal_name} {nope}"}, "'nope' is not a column of company"),
        ("p", {"column": "id"}, "'id' is Ponte's own row id"),
        ("p", {"column": "salesperson_id"}, "references: {salesperson_id: p}"),
        ("p", {"column": "a", "template": "{a}"}, "give exactly one of column and template"),
        ("p", {"template": "no placeholder"}, "names no {column}"),
        ("p", {"column": "code", "values": {"A": 1}, "unknown": "default"}, "needs a default"),
        ("p", {"column": "phone", "phone": "E164"}, "phone: set region"),
        ("p", {"column": "phone", "phone": "E164", "region": "XX"}, "region 'XX'"),
        ("p", {"column": "country", "country": "alpha9"}, "country"),
        ("p", {"column": "code", "split": "middle"}, "split.part"),
        ("p", {"column": "code", "split": {True: "-", "part": "last"}}, "write 'separator:'"),
        ("p", {"column": "code", "colour": "red"}, "colour"),
    ],
)  # fmt: skip
def test_bad_expressions_are_refused_at_load(
    tmp_path: Path, prop: str, expression: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as error:
        load_with(tmp_path, properties={**PLAIN, prop: expression})
    assert "objects.company" in str(error.value) and f"properties.{prop}" in str(error.value)


def test_natural_key_only_through_an_expression_is_refused(tmp_path: Path) -> None:
    properties = {"legal_name": "name", "custom_fields.cnpj": {"column": "document"}}
    with pytest.raises(ValueError, match="natural_key: 'document' is only sent through an"):
        load_with(tmp_path, properties=properties)


def test_expression_on_a_path_also_mapped_is_refused(tmp_path: Path) -> None:
    properties = {**PLAIN, "name": {"template": "{trade_name}"}}
    with pytest.raises(ValueError, match=r"properties.name: .name. is also mapped from a column"):
        load_with(tmp_path, properties=properties)


# --- through the consumer -----------------------------------------------------------------

EXPRESSIONS = {
    **PLAIN,
    "person.first_name": {"template": "{trade_name}", "split": "first"},
    "person.last_name": {"template": "{trade_name}", "split": "rest"},
    "address.full": {"template": "{street}, {city} - {state}"},
    "tier": {"column": "code", "values": {"A": "gold"}, "unknown": "default", "default": "bronze"},
    "phone": {"column": "phone", "phone": "E164", "region": "BR"},
    "country": {"column": "country", "country": "alpha2"},
    "email": {"column": "email", "required": True},
    "postal_code": {"column": "postal_code"},
}


@pytest.mark.integration
async def test_a_company_goes_with_its_expressions_and_a_bad_one_is_dead_lettered(
    settings: Settings,  # noqa: F811
    pool: asyncpg.Pool,
    crm: tuple[RestCrmState, str],  # noqa: F811
) -> None:
    state, url = crm
    source_id = f"x-{uuid.uuid4().hex[:8]}"
    target = doc_target(url, source_id, properties=EXPRESSIONS, omit_null=True)
    row = {
        "legal_name": "Acme Ltda", "document": cnpj(1), "trade_name": "Maria da Silva",
        "street": "Rua X 1", "city": "Recife", "state": "PE", "code": "A",
        "phone": "(81) 98765-4321", "country": "Brasil", "email": "m@acme.io",
    }  # fmt: skip
    await produce(
        settings,
        [
            change(source_id, "OK", 1, **row),
            change(source_id, "NOMAIL", 1, **{**row, "document": cnpj(2), "email": None}),
            change(source_id, "BADPHONE", 1, **{**row, "document": cnpj(3), "phone": "12"}),
        ],
    )

    async def done() -> bool:
        return (
            await count_deliveries(pool, target) == 1
            and await count_deliveries(pool, target, "failed") == 2
        )

    await run_deliver(settings, pool, target, done)
    (stored,) = organisations(state)
    assert stored["name"] == "Acme Ltda"
    assert stored["person"] == {"first_name": "Maria", "last_name": "da Silva"}
    assert stored["address"] == {"full": "Rua X 1, Recife - PE"}  # city: null was omitted
    assert (stored["tier"], stored["phone"], stored["country"], stored["email"]) == (
        "gold", "+5581987654321", "BR", "m@acme.io",
    )  # fmt: skip
    assert "postal_code" not in stored  # null, and omit_null: not sent at all
    assert stored["owner_id"] == 7  # the doc's constants still go
    dead = await read_topic(settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=2)
    reasons = {d.key.decode(): dict(d.headers)["ponte-dlq-reason"].decode() for d in dead}
    assert reasons == {
        f"{source_id}/company/NOMAIL": "refused: objects.company.properties.email: required, "
        "and the row has no value for 'email'",
        f"{source_id}/company/BADPHONE": "refused: objects.company.properties.phone: '12' is "
        "not a valid phone number for region BR",
    }


def test_doc_expressions_block_loads_into_the_worked_example(tmp_path: Path) -> None:
    """docs/connectors/rest.md's expressions example, loaded as written there."""
    text = DOC.read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if "omit_null" in b)
    company = yaml.safe_load(textwrap.dedent(block))
    load_with(tmp_path, **company)
    assert set(company["properties"]) >= {"first_name", "phone", "country_code", "email"}
