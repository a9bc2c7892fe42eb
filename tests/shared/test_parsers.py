"""Value parsers: Brazilian formats and what shops send (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ponte.shared.parsers import (
    PARSERS,
    ParseError,
    parse_boolean,
    parse_cnpj,
    parse_cpf,
    parse_date,
    parse_datetime,
    parse_decimal,
    parse_document,
    parse_email,
    parse_integer,
    parse_number,
    parse_text,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.234,56", Decimal("1234.56")),
        ("617,28", Decimal("617.28")),
        ("2", Decimal("2")),
        ("1.234", Decimal("1234")),
        ("12.5", Decimal("12.5")),
        ("-1.000.000,01", Decimal("-1000000.01")),
        ("R$ 1.234,56", Decimal("1234.56")),
        (10, Decimal("10")),
        (0.1, Decimal("0.1")),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_decimal(raw: object, expected: Decimal | None) -> None:
    assert parse_decimal(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "1,2,3", "NaN", "Infinity", True, {"v": 1}, [1]])
def test_decimal_rejects(raw: object) -> None:
    with pytest.raises(ParseError):
        parse_decimal(raw)


def test_number_is_dot_decimal() -> None:
    assert parse_number("1.500") == Decimal("1.500")
    assert parse_number("617.28") == Decimal("617.28")
    with pytest.raises(ParseError):
        parse_number("1.234,56")


def test_integer() -> None:
    assert parse_integer("1.234") == 1234 and parse_integer("7") == 7
    with pytest.raises(ParseError, match="whole"):
        parse_integer("1,5")


def test_dates_and_times_in_sao_paulo() -> None:
    assert parse_date("14/11/2024") == date(2024, 11, 14)
    assert parse_date("2024-11-14") == date(2024, 11, 14)
    assert parse_datetime("14/11/2024 12:01") == datetime(2024, 11, 14, 15, 1, tzinfo=UTC)
    assert parse_datetime("14/11/2024 12:01:32") == datetime(2024, 11, 14, 15, 1, 32, tzinfo=UTC)
    assert parse_datetime("2024-11-14T12:01:32-03:00") == datetime(
        2024, 11, 14, 15, 1, 32, tzinfo=UTC
    )
    assert parse_datetime("14/11/2024") == datetime(2024, 11, 14, 3, 0, tzinfo=UTC)
    for bad in ("31/02/2024", "14/13/2024", "ontem", "2024-13-01"):
        with pytest.raises(ParseError):
            parse_datetime(bad)


def test_cnpj_and_cpf_normalised_and_check_digits_validated() -> None:
    assert parse_cnpj("11.222.333/0001-81") == "11222333000181"
    assert parse_cnpj("11222333000181") == "11222333000181"
    assert parse_cnpj("12.ABC.345/01DE-35") == "12ABC34501DE35"  # alphanumeric (2026)
    assert parse_cpf("529.982.247-25") == "52998224725"
    assert parse_document("529.982.247-25") == "52998224725"
    assert parse_document("11.222.333/0001-81") == "11222333000181"
    for bad in ("11.222.333/0001-82", "00000000000000", "123"):
        with pytest.raises(ParseError, match="CNPJ"):
            parse_cnpj(bad)
    with pytest.raises(ParseError, match="CPF"):
        parse_cpf("529.982.247-26")


def test_text_boolean_email() -> None:
    assert parse_text("  Comércio   São João  ") == "Comércio São João"
    assert parse_text("") is None and parse_text(123) == "123"
    assert parse_boolean("S") is True and parse_boolean("não") is False
    assert parse_boolean("Inativo") is False and parse_boolean(None) is None
    with pytest.raises(ParseError):
        parse_boolean("talvez")
    assert parse_email(" Ana@Example.COM ") == "ana@example.com"
    with pytest.raises(ParseError):
        parse_email("ana.example.com")


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
    )
)
def test_parsers_return_or_raise_parse_error_only(value: object) -> None:
    for parse in PARSERS.values():
        try:
            parse(value)
        except ParseError as error:
            assert str(error)  # says why
