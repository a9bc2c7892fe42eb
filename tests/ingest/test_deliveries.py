"""Parsing a delivery into record events (pure functions, no infrastructure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ponte.ingest.deliveries import (
    charset_of,
    decode_json,
    is_woocommerce_ping,
    parse_erp,
    parse_shop,
)
from ponte.shared.events import delivery_id_for, erp_record_key
from ponte.shared.rejections import Rejection
from ponte.shared.source_kinds import SourceKind

NOW = datetime(2024, 11, 14, 15, 0, tzinfo=UTC)


def test_latin1_declared_charset_is_honoured() -> None:
    body = '{"nome": "Jo\u00e3o"}'.encode("latin-1")
    assert decode_json(body, "application/json; charset=ISO-8859-1") == {"nome": "João"}
    assert charset_of('application/json; charset="latin1"') == "iso8859-1"


def test_undeclared_latin1_is_a_clear_400() -> None:
    body = '{"nome": "Jo\u00e3o"}'.encode("latin-1")
    with pytest.raises(Rejection) as caught:
        decode_json(body, "application/json")
    assert caught.value.status_code == 400 and "charset" in caught.value.message


def test_unknown_charset_is_415() -> None:
    with pytest.raises(Rejection) as caught:
        decode_json(b"{}", "application/json; charset=klingon")
    assert caught.value.status_code == 415


def test_deeply_nested_json_is_a_422_not_a_crash() -> None:
    with pytest.raises(Rejection) as caught:
        decode_json(b"[" * 100_000 + b"]" * 100_000, None)
    assert caught.value.status_code == 422 and caught.value.code == "too_deep"
    assert "deeper than 64" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 18446744073709551615, "m": -9223372036854775808}',  # 20 digits: json.loads
        b'{"n": 1180591620717411303424}',  # 2**70: orjson would read a float
        b'{"n": [1234567890123456789, 123456789012345678]}',
        b'{"cnpj": "12345678000190", "total": 1234.56, "small": 1e-400}',
        b'{"chave": "35241112345678000190550010000012341000012345"}',
        b'\xef\xbb\xbf{"bom": true}',
    ],
)
def test_parsed_values_equal_json_loads(body: bytes) -> None:
    """The fast path (orjson) is taken only where it reads the same values: integers are
    never widened to floats, and what orjson refuses is read by the strict path."""
    expected = json.loads(body.decode("utf-8").removeprefix("\ufeff"))
    parsed = decode_json(body, "application/json")
    assert json.dumps(parsed) == json.dumps(expected)
    assert [type(v) for v in _leaves(parsed)] == [type(v) for v in _leaves(expected)]


def test_a_latin1_body_meets_the_same_limits() -> None:
    """A declared charset changes how bytes become text, not what the decoder allows."""
    with pytest.raises(Rejection) as caught:
        decode_json(b'{"a": 1, "a": 2}', "application/json; charset=ISO-8859-1")
    assert caught.value.status_code == 422 and caught.value.code == "duplicate_key"


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def erp(**overrides: object) -> dict[str, object]:
    return {
        "id": "evt-1",
        "occurred_at": "14/11/2024",
        "table": "Pedido",
        "rows": [{"codigo": "PED-1"}],
        **overrides,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (erp(occurred_at="ontem"), "occurred_at"),
        (erp(rows=[]), "rows"),
        (erp(rows=[{}]), "rows.0"),
        (erp(rows=["x"]), "rows.0"),
        (erp(table=""), "table"),
        (erp(operation="merge"), "operation"),
        (erp(colour="blue"), "colour"),
        ({k: v for k, v in erp().items() if k != "id"}, "id"),
        ([1, 2], "body"),
    ],
)
def test_invalid_envelope_names_the_field(body: object, field: str) -> None:
    with pytest.raises(Rejection) as caught:
        parse_erp("erp", body, NOW)
    assert caught.value.status_code == 422
    assert caught.value.field == field, caught.value.message
    assert field in caught.value.message


def test_brazilian_occurred_at_is_local_time() -> None:
    event = parse_erp("erp", erp(occurred_at="14/11/2024 12:01"), NOW).events[0]
    assert event.occurred_at == datetime(2024, 11, 14, 15, 1, tzinfo=UTC)
    with pytest.raises(Rejection):
        parse_erp("erp", erp(occurred_at="31/02/2024"), NOW)


def test_erp_rows_become_record_events_with_stable_ids() -> None:
    body = erp(occurred_at="2024-11-14T12:01:32", rows=[{"codigo": "A"}, {"codigo": "B"}])
    first = parse_erp("erp", body, NOW)
    again = parse_erp("erp", json.loads(json.dumps(body)), NOW)
    assert [e.event_id for e in first.events] == [e.event_id for e in again.events]
    assert [e.record_key for e in first.events] == ["A", "B"]
    assert first.events[0].partition_key == b"erp/Pedido/A"
    # No offset: read as São Paulo local time (UTC-3 on that date).
    assert first.events[0].occurred_at is not None
    assert first.events[0].occurred_at.utcoffset().total_seconds() == -3 * 3600  # type: ignore[union-attr]
    assert first.delivery_id == delivery_id_for("erp", "evt-1")
    assert delivery_id_for("other", "evt-1") != first.delivery_id


def test_record_keys() -> None:
    assert erp_record_key("Tabela de tabelas", {"tabela": "UF", "chave": "PR"}) == "UF:PR"
    assert (
        erp_record_key("Empresa", {"cnpj": "12.345.678/0001-95", "nome": "x"})
        == "12.345.678/0001-95"
    )
    assert erp_record_key("Vendedor", {"matricula": "V7"}, ["matricula"]) == "V7"
    keyless = erp_record_key("Nota", {"valor": "1"})
    assert keyless.startswith("sha256:") and keyless == erp_record_key("Nota", {"valor": "1"})


def test_shopify_delete_topic_is_a_delete() -> None:
    headers = {"x-shopify-topic": "customers/delete", "x-shopify-webhook-id": "w-1"}
    delivery = parse_shop(SourceKind.SHOPIFY, "shop", headers, b"{}", {"id": 5}, NOW)
    assert delivery.events[0].operation == "delete"
    assert delivery.events[0].partition_key == b"shop/customers/5"
    assert delivery.dedup_key == "w-1"


def test_shop_without_delivery_id_dedups_on_body_digest() -> None:
    headers = {"x-wc-webhook-topic": "product.updated"}
    a = parse_shop(SourceKind.WOOCOMMERCE, "woo", headers, b'{"id": 9}', {"id": 9}, NOW)
    b = parse_shop(SourceKind.WOOCOMMERCE, "woo", headers, b'{"id": 9}', {"id": 9}, NOW)
    assert a.dedup_key.startswith("sha256:") and a.delivery_id == b.delivery_id


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        ({}, {"id": 1}, "x-shopify-topic"),
        ({"x-shopify-topic": "orders/create"}, {"name": "#1001"}, "id"),
        ({"x-shopify-topic": "orders/create"}, [1], "body"),
    ],
)
def test_shop_payload_errors_name_the_field(
    headers: dict[str, str], body: object, field: str
) -> None:
    with pytest.raises(Rejection) as caught:
        parse_shop(SourceKind.SHOPIFY, "shop", headers, b"", body, NOW)
    assert caught.value.field == field


def test_woocommerce_ping_detection() -> None:
    assert is_woocommerce_ping({}, b"webhook_id=12")
    assert not is_woocommerce_ping({"x-wc-webhook-topic": "order.created"}, b"webhook_id=12")
    assert not is_woocommerce_ping({}, b'{"id": 1}')


def test_mapping_keys_keep_a_child_sent_alone_with_its_record() -> None:
    from ponte.shared.mapping import default_mapping

    keys = default_mapping("erp").record_key_fields()
    assert keys["Itens pedido"] == ["pedido", "seq"]
    assert keys["Empresa marca"] == ["empresa", "marca"]
    item = parse_erp(
        "erp", erp(table="Itens pedido", rows=[{"pedido": "PED-1", "seq": 2}]), NOW, keys
    )
    assert item.events[0].partition_key == b"erp/Itens pedido/PED-1:2"
    # Without the mapping's keys the same row would be keyed by its content.
    assert erp_record_key("Itens pedido", {"pedido": "PED-1", "seq": 2}).startswith("sha256:")
    # A row missing a key field falls back rather than failing.
    partial = parse_erp("erp", erp(table="Itens pedido", rows=[{"seq": 2}]), NOW, keys)
    assert partial.events[0].record_key.startswith("sha256:")
