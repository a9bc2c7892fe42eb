"""The edge's strict JSON decoder (pure: no infrastructure).

Each limit is refused with its code and the JSON path of the value at fault; whatever
``loads`` accepts is exactly what Python's json reads; and the fast path (orjson) never
decides differently from the strict path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponte.shared import strict_json
from ponte.shared.strict_json import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    RAW_EVENT_DEPTH,
    JsonRefused,
    check_value,
    loads,
)


def refused(document: bytes | str, **kwargs: Any) -> JsonRefused:
    with pytest.raises(JsonRefused) as caught:
        loads(document, **kwargs)
    return caught.value


def nested(depth: int, leaf: str = "1") -> bytes:
    return ('{"rows": [{"v": ' + '{"a": ' * (depth - 3) + leaf + "}" * (depth - 3) + "}]}").encode()


@pytest.mark.parametrize(
    ("document", "code", "path", "mentions"),
    [
        (nested(MAX_DEPTH + 1), "too_deep", "$.rows[0].v" + ".a" * (MAX_DEPTH - 3), "64"),
        (b"[" * 300 + b"]" * 300, "too_deep", "$" + "[0]" * 64, "deeper than 64"),
        (b"[" * 5000 + b"]" * 5000, "too_deep", "$", "at character 64"),
        (b'{"n": ' + b"9" * 4301 + b"}", "number_too_large", "$.n", "4301 digits"),
        (b'{"n": -' + b"9" * 51 + b"}", "number_too_large", "$.n", "51 digits"),
        (b'{"n": 1.' + b"5" * 70 + b"}", "number_too_large", "$.n", "72 characters"),
        (b'{"n": 1e999}', "non_finite_number", "$.n", "1e999"),
        (b'{"n": [0, -1e999]}', "non_finite_number", "$.n[1]", "-1e999"),
        (b'{"n": NaN}', "non_finite_number", "$.n", "NaN"),
        (b'{"n": -Infinity}', "non_finite_number", "$.n", "-Infinity"),
        (b'{"s": "a\\ud800b"}', "lone_surrogate", "$.s", "\\ud800"),
        (b'{"\\udfff": 1}', "lone_surrogate", '$["\\udfff"]', "in a key"),
        (b'{"s": "X\\u0000Y"}', "nul_character", "$.s", "NUL"),
        (b'{"rows": [{"k\\u0000": 1}]}', "nul_character", '$.rows[0]["k\\u0000"]', "a key"),
        (
            b'{"operation": "upsert", "operation": "delete"}',
            "duplicate_key",
            "$",
            '"operation"',
        ),
        (b'{"rows": [{"a": 1}, {"b": {"c": 1, "c": 1}}]}', "duplicate_key", "$.rows[1].b", '"c"'),
    ],
    ids=[
        "depth-65",
        "depth-300",
        "depth-5000",
        "int-4301-digits",
        "int-51-digits",
        "long-fraction",
        "1e999",
        "minus-1e999",
        "nan",
        "minus-infinity",
        "lone-surrogate",
        "lone-surrogate-key",
        "nul-value",
        "nul-key",
        "duplicate-operation",
        "duplicate-nested",
    ],
)
def test_each_limit_is_refused_with_its_code_and_path(
    document: bytes, code: str, path: str, mentions: str
) -> None:
    for form in (document, document.decode()):  # the fast path takes bytes only
        problem = refused(form)
        assert problem.code == code, problem.message
        assert problem.status == 422
        assert problem.path == path, problem.message
        assert mentions in problem.message


def test_a_document_at_the_limits_is_accepted() -> None:
    value = loads(nested(MAX_DEPTH))
    assert value["rows"][0]["v"]["a"]
    assert loads(b"[" + b"9" * MAX_INT_DIGITS + b"]") == [int("9" * MAX_INT_DIGITS)]
    assert loads(b'"\\ud83d\\ude00 \\u00e3 \\n\\u0001"') == "\U0001f600 ã \n\x01"
    assert loads(b"\xef\xbb\xbf{}") == {}


def test_a_raw_event_may_be_one_level_deeper() -> None:
    """The raw topic wraps what the edge accepted in an event object."""
    document = b"{" + b'"p": {' * (MAX_DEPTH - 1) + b"}" * MAX_DEPTH
    assert loads(b'{"e": ' + document + b"}", max_depth=RAW_EVENT_DEPTH)
    assert refused(b'{"e": ' + document + b"}").code == "too_deep"


@pytest.mark.parametrize(
    ("document", "code", "mentions"),
    [
        (b'{"id": "x", ', "invalid_json", "line 1 column 13"),
        (b'{"a": 1} x', "invalid_json", "Extra data"),
        (b'{"s": "a\nb"}', "invalid_json", "Invalid control character"),
        (b'{"s": "\xff"}', "bad_encoding", "byte 7"),
    ],
)
def test_syntax_and_encoding_errors_are_400_with_a_position(
    document: bytes, code: str, mentions: str
) -> None:
    problem = refused(document)
    assert (problem.status, problem.code) == (400, code)
    assert mentions in problem.message and problem.offset is not None


def test_check_value_refuses_python_rows_too() -> None:
    """Rows built from files and pulled pages are checked with the same limits."""
    for row, code in [
        ({"a": "x\x00"}, "nul_character"),
        ({"a": float("nan")}, "non_finite_number"),
        ({"a": 10**60}, "number_too_large"),
        ({"a\ud800": 1}, "lone_surrogate"),
    ]:
        with pytest.raises(JsonRefused) as caught:
            check_value(row)
        assert caught.value.code == code
    check_value({"a": 1.5, "b": [True, None, "ok"], "c": 10**49})


# JSON with extreme nesting, numbers, Unicode and duplicate keys, as text.
_SCALARS = st.one_of(
    st.integers(min_value=-(10**60), max_value=10**60).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "1e-999", "-0.0", "1E+2"]),
    st.text(max_size=8).map(json.dumps),
    st.text(max_size=8).map(lambda t: json.dumps(t, ensure_ascii=False)),
    st.sampled_from(['"\\ud800"', '"a\\u0000"', '"\\u003a"', '"12345678901234567890123"']),
    st.sampled_from(["true", "false", "null"]),
)
_KEYS = st.one_of(
    st.sampled_from(['"a"', '"b"', '"a:b"', '"\\u003a"', '"k\\u0000"', '"\\udc00"']),
    st.text(max_size=4).map(json.dumps),
)


def _document(depth: int) -> st.SearchStrategy[str]:
    return st.recursive(
        _SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
            st.lists(st.tuples(_KEYS, children), max_size=4).map(
                lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
            ),
        ),
        max_leaves=depth,
    )


_DEEP = st.integers(min_value=1, max_value=MAX_DEPTH + 3).map(lambda n: "[" * n + "1" + "]" * n)


def _strict_reading(text: str) -> tuple[str, Any]:
    try:
        return "value", strict_json._strict(text, MAX_DEPTH)
    except JsonRefused as problem:
        return problem.code, problem.path


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_document(40), _DEEP))
def test_the_fast_path_decides_exactly_as_the_strict_path(text: str) -> None:
    """orjson is used only where its reading is the strict one; and what is accepted
    reads as Python's json reads it."""
    expected = _strict_reading(text)
    try:
        actual: tuple[str, Any] = ("value", loads(text.encode("utf-8", "surrogatepass")))
    except JsonRefused as problem:
        actual = (problem.code, problem.path)
    if expected[0] == "value":
        assert actual[0] == "value", actual
        assert json.dumps(actual[1]) == json.dumps(json.loads(text))
        assert json.dumps(expected[1]) == json.dumps(json.loads(text))
    else:
        assert actual[0] == expected[0], (actual, expected)
