"""A raw-topic message into records or a rejection: the edge's limits, applied again
(pure: no infrastructure)."""

from __future__ import annotations

import orjson
import pytest

from ponte.shared.strict_json import MAX_DEPTH
from ponte.transform.decode import Decoder
from tests.transform.conftest import raw_event


def message(row: dict[str, object]) -> bytes:
    return raw_event("Pedido", row, source_id="erp").model_dump_json().encode()


def test_a_payload_as_deep_as_the_edge_accepts_is_decoded() -> None:
    """The edge's row sits at depth 3 of its envelope ({"rows": [row]}) and at depth 2
    of the raw event, so anything the edge accepted is within the event's limit."""
    value: object = 1
    for _ in range(MAX_DEPTH - 3):
        value = {"a": value}
    decoded = Decoder().decode(message({"codigo": "P1", "extra": value}))
    assert decoded.rejection is None or decoded.rejection.code != "undecodable"


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (message({"codigo": "P1", "nome": "X\u0000Y"}), "NUL"),
        (message({"codigo": "P1", "a": 1}).replace(b'"a":1', b'"a":1,"a":2'), '"a"'),
        (message({"codigo": "P1", "n": 1}).replace(b'"n":1', b'"n":1e999'), "1e999"),
        (message({"codigo": "P1", "n": 1}).replace(b'"n":1', b'"n":' + b"9" * 4400), "4400"),
    ],
    ids=["nul", "duplicate", "non-finite", "huge-int"],
)
def test_what_the_edge_refuses_is_refused_by_name_never_altered(raw: bytes, mentions: str) -> None:
    """NUL used to be stripped here (merging "X\\0Y" with "XY"); now every limit is a
    rejection naming the problem and its path, for messages the edge did not check."""
    decoded = Decoder().decode(raw)
    assert decoded.records == []
    assert decoded.rejection is not None
    assert decoded.rejection.code == "undecodable"
    assert mentions in decoded.rejection.reason
    assert decoded.rejection.field and decoded.rejection.field.startswith("$.payload")


def test_an_ordinary_event_still_decodes() -> None:
    decoded = Decoder().decode(message({"codigo": "P1", "total": "1,50"}))
    assert decoded.rejection is None and decoded.records
    assert orjson.loads(message({"codigo": "P1"}))["payload"] == {"codigo": "P1"}
