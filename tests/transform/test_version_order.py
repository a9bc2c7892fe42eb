"""Which version wins when timestamps are equal: the sequence (the source's own field, else
the raw topic offset), never the event ids compared as text; and a tombstone is the same
row whatever order its record's events arrive in.

The event ids are chosen so that text order and the sequence disagree: "evt-9" sorts after
"evt-10" as text, yet evt-10 has the larger sequence in every pair below. With main's
ordering (``Version(at, event_id)``) the property test's expected state itself is wrong.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponte.deliver.changes import change_from, event_body
from ponte.shared.db import init_connection
from ponte.shared.events import RawEvent
from ponte.shared.mapping import Mapping, default_mapping
from ponte.shared.settings import Settings
from ponte.shared.versions import Version, version_order
from ponte.transform.decode import Decoder
from ponte.transform.normalize import RecordRejected, normalize_record
from ponte.transform.repository.applier import BatchApplier
from tests.transform.conftest import BASE_TIME, raw_event

ERP = default_mapping("erp")
AT = BASE_TIME + timedelta(minutes=5)


# --- the order itself -----------------------------------------------------------------


def test_equal_times_are_ordered_by_sequence_not_by_event_id_text() -> None:
    older = Version(AT, 3, "evt-9/000000")
    newer = Version(AT, 4, "evt-10/000000")
    assert newer.newer_than(older)
    assert not older.newer_than(newer)


def test_time_comes_before_sequence_and_a_missing_sequence_before_offset_zero() -> None:
    assert Version(AT, 0, "a").newer_than(Version(AT - timedelta(seconds=1), 10**9, "z"))
    assert Version(AT, 0, "a").newer_than(Version(AT, None, "z"))
    # Equal time and sequence: the event id, only so that the order is total.
    assert Version(AT, 7, "b").newer_than(Version(AT, 7, "a"))
    assert not Version(AT, 7, "a").newer_than(Version(AT, 7, "a"))


def test_a_record_takes_the_raw_topic_offset_as_its_sequence() -> None:
    event = raw_event("Pedido", {"codigo": "PED-1"}, source_id="s", event_id="evt-9/0")
    assert normalize_record(event, ERP, offset=41).version.seq == 41
    assert normalize_record(event, ERP).version.seq is None  # no offset: NO_SEQUENCE
    decoded = Decoder().decode(event.model_dump_json().encode(), 42)
    assert decoded.rejection is None
    assert [record.version.seq for record in decoded.records] == [42]


# --- the source's own sequence (mapping ``version: {field: ...}``) -----------------------


def with_sequence(table: str = "Empresa", field: str = "rowversion") -> Mapping:
    document = ERP.model_dump(mode="json", exclude_none=True)
    document["tables"][table]["version"] = {"field": field}
    return Mapping.model_validate(document)


@pytest.mark.parametrize(
    ("sent", "seq"), [(17, 17), ("0017", 17), (" 42 ", 42), ("0x00000000000007D1", 2001)]
)
def test_a_mapped_sequence_field_wins_over_the_offset(sent: Any, seq: int) -> None:
    mapping = with_sequence()
    event = raw_event("Empresa", {"codigo": "E1", "rowversion": sent}, source_id="s")
    record = normalize_record(event, mapping, offset=999)
    assert record.version.seq == seq
    assert ("Empresa", "rowversion") not in record.unmapped  # known: it is the version
    assert "rowversion" not in record.root.extra


@pytest.mark.parametrize(
    ("row", "code", "reason"),
    [
        ({"codigo": "E1"}, "missing_version", "version sequence (version.field) and is"),
        ({"codigo": "E1", "rowversion": " "}, "missing_version", "is missing"),
        ({"codigo": "E1", "rowversion": "12a"}, "invalid_version", "digits or 0x-hex"),
        ({"codigo": "E1", "rowversion": "0xZZ"}, "invalid_version", "digits or 0x-hex"),
        ({"codigo": "E1", "rowversion": -1}, "invalid_version", "between 0 and"),
        ({"codigo": "E1", "rowversion": 2**63}, "invalid_version", "between 0 and"),
        ({"codigo": "E1", "rowversion": True}, "invalid_version", "not bool"),
        ({"codigo": "E1", "rowversion": 1.5}, "invalid_version", "not float"),
    ],
)
def test_a_bad_or_missing_sequence_rejects_the_record_naming_the_field(
    row: dict[str, Any], code: str, reason: str
) -> None:
    for operation in ("upsert", "delete"):
        event = raw_event("Empresa", row, source_id="s", operation=operation)
        with pytest.raises(RecordRejected) as caught:
            normalize_record(event, with_sequence(), offset=1)
        assert caught.value.code == code
        assert caught.value.field == "Empresa.rowversion"
        assert reason in caught.value.reason


def test_a_child_and_its_parent_must_order_by_the_same_kind_of_sequence() -> None:
    with pytest.raises(ValueError, match=r"'Itens pedido' version: its parent table 'Pedido'"):
        with_sequence("Pedido")
    with pytest.raises(ValueError, match=r"'Itens pedido' version: this table names"):
        with_sequence("Itens pedido")
    document = ERP.model_dump(mode="json", exclude_none=True)
    for table in ("Pedido", "Itens pedido"):
        document["tables"][table]["version"] = {"field": "rowversion"}
    Mapping.model_validate(document)  # both: fine
    document["tables"]["Pedido"]["version"] = {"field": "rowversion", "kind": "x"}
    with pytest.raises(ValueError, match="kind"):
        Mapping.model_validate(document)


# --- change events carry it to deliver --------------------------------------------------


def test_change_events_carry_the_sequence_and_old_ones_read_as_none() -> None:
    body = {
        "entity": "order",
        "source_id": "s",
        "source_key": "PED-1",
        "row_id": 1,
        "operation": "upsert",
        "row": {},
        "version": {"at": AT.isoformat(), "event_id": "evt-9/000000"},
    }
    old = change_from(body, topic="t", partition=0, offset=1, published_at=None)
    assert old.version_seq is None  # published before the sequence: NO_SEQUENCE
    body["version"] = {"at": AT.isoformat(), "seq": 8, "event_id": "evt-10/000000"}
    new = change_from(body, topic="t", partition=0, offset=2, published_at=None)
    assert new.version_seq == 8 and new.version_key() > old.version_key()
    assert event_body(new)["version"]["seq"] == 8
    body["version"] = {"at": AT.isoformat(), "seq": "8", "event_id": "e"}
    with pytest.raises(ValueError, match=r"version\.seq"):
        change_from(body, topic="t", partition=0, offset=3, published_at=None)


# --- SQL agrees with Python -------------------------------------------------------------

_triples = st.tuples(
    st.sampled_from([None, AT, AT + timedelta(seconds=1)]),
    st.sampled_from([None, 0, 9, 10, 2**40]),
    st.sampled_from(["", "evt-9/000000", "evt-10/000000", "Evt-1", "evt_1", "évt-1", "evt-1~x"]),
)


@pytest.fixture(scope="module")
async def human_collation(pool: asyncpg.Pool) -> str:
    """A collation that orders text unlike code points (case and punctuation folded): the
    event ids under test carry it, as a column of a database created with that locale
    would, so a comparison without ``COLLATE "C"`` disagrees with Python."""
    found = await pool.fetchval(
        "SELECT collname FROM pg_collation WHERE collname IN ('und-x-icu', 'en_US.utf8', "
        "'en_US.UTF-8') ORDER BY collname = 'und-x-icu' DESC LIMIT 1"
    )
    if found is None:
        pytest.skip("this PostgreSQL has no collation but C: nothing to disagree with")
    return str(found)


@pytest.mark.integration
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(left=_triples, right=_triples)
async def test_sql_orders_versions_as_python_does(
    pool: asyncpg.Pool,
    human_collation: str,
    left: tuple[datetime | None, int | None, str],
    right: tuple[datetime | None, int | None, str],
) -> None:
    """Every SQL comparison uses ``version_order``; the database's collation must not
    put the event ids the other way round from Python."""
    collate = f'COLLATE "{human_collation}"'
    smaller = await pool.fetchval(
        f"SELECT {version_order('a')} < {version_order('b')} FROM "
        "(SELECT $1::timestamptz AS version_at, $2::int8 AS version_seq, "
        f"$3::text {collate} AS version_event_id) a, (SELECT $4::timestamptz AS version_at, "
        f"$5::int8 AS version_seq, $6::text {collate} AS version_event_id) b",
        *left,
        *right,
    )
    assert smaller == Version(*right).newer_than(Version(*left))


# --- the final state, tombstones included, whatever the arrival order -------------------

# (table, row, minute, operation, event id, offset): the offsets are the broker's order.
# At equal minutes the larger offset wins, and it always has the event id that sorts
# first as text (evt-10 < evt-9), so main's text ordering picks the other one.
EVENTS: list[tuple[str, dict[str, Any], int, str, str, int]] = [
    # Two upserts: the later one's total.
    ("Pedido", {"codigo": "PED-1", "total": "1,00"}, 5, "upsert", "evt-9", 10),
    ("Pedido", {"codigo": "PED-1", "total": "2,00"}, 5, "upsert", "evt-10", 11),
    # An earlier time loses whatever its offset (a replay of an old version).
    ("Pedido", {"codigo": "PED-1", "total": "9,00"}, 4, "upsert", "evt-99", 90),
    # Upsert then delete at the same time: deleted.
    ("Pedido", {"codigo": "PED-2", "total": "3,00", "moeda": "BRL"}, 5, "upsert", "evt-9", 20),
    ("Pedido", {"codigo": "PED-2"}, 5, "delete", "evt-10", 21),
    # Delete then upsert at the same time: alive, with the upsert's content.
    ("Pedido", {"codigo": "PED-3"}, 5, "delete", "evt-9", 30),
    ("Pedido", {"codigo": "PED-3", "total": "4,00"}, 5, "upsert", "evt-10", 31),
    # Two deletes, and an older upsert arriving after them: the later delete's tombstone.
    ("Pedido", {"codigo": "PED-4"}, 5, "delete", "evt-9", 40),
    ("Pedido", {"codigo": "PED-4"}, 6, "delete", "evt-10", 41),
    ("Pedido", {"codigo": "PED-4", "total": "5,00", "moeda": "USD"}, 5, "upsert", "evt-8", 42),
    # A delete, then an older upsert: the tombstone holds no content of it.
    ("Pedido", {"codigo": "PED-5"}, 6, "delete", "evt-1", 50),
    ("Pedido", {"codigo": "PED-5", "total": "6,00"}, 5, "upsert", "evt-2", 51),
    # A company: two versions at one time (its table, its tombstone columns too).
    ("Empresa", {"codigo": "E1", "razao_social": "Acme"}, 5, "upsert", "evt-9", 60),
    ("Empresa", {"codigo": "E1", "razao_social": "Acme Ltda"}, 5, "upsert", "evt-10", 61),
]


def events_for(source_id: str, order: list[int]) -> list[tuple[RawEvent, int]]:
    return [
        (
            raw_event(
                EVENTS[i][0],
                EVENTS[i][1],
                source_id=source_id,
                minute=EVENTS[i][2],
                operation=EVENTS[i][3],
                event_id=f"{EVENTS[i][4]}/0",
            ),
            EVENTS[i][5],
        )
        for i in order
    ]


async def apply_in_batches(dsn: str, events: list[tuple[RawEvent, int]], cuts: list[int]) -> None:
    """Each batch with its own ``now``: a tombstone must not carry when it was written."""
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        start, now = 0, datetime(2030, 1, 1, tzinfo=UTC)
        for end in [*sorted(set(cuts)), len(events)]:
            batch, start, now = events[start:end], end, now + timedelta(hours=1)
            if batch:
                async with connection.transaction():
                    await BatchApplier(connection, now).apply(
                        [normalize_record(event, ERP, offset=offset) for event, offset in batch]
                    )
    finally:
        await connection.close()


async def snapshot(dsn: str, source_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the source, tombstones included, with every column but the surrogate
    id and ``updated_at`` (when Ponte wrote it, the one column that may differ)."""
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    try:
        state = {}
        for table in ("orders", "companies"):
            rows = await connection.fetch(
                f"SELECT * FROM {table} WHERE source_id = $1 ORDER BY source_key",
                source_id,
            )
            state[table] = [
                {k: v for k, v in dict(row).items() if k not in {"id", "updated_at", "source_id"}}
                for row in rows
            ]
        return state
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def dsn(base_settings: Settings) -> str:
    return base_settings.asyncpg_dsn


@pytest.fixture(scope="module")
def expected(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """The broker's order, one event per batch: what the rules say."""
    source_id = f"seq-{uuid.uuid4().hex[:8]}"
    in_offset_order = sorted(range(len(EVENTS)), key=lambda i: EVENTS[i][5])
    asyncio.run(
        apply_in_batches(dsn, events_for(source_id, in_offset_order), list(range(len(EVENTS))))
    )
    state = asyncio.run(snapshot(dsn, source_id))
    orders = {row["source_key"]: row for row in state["orders"]}
    assert str(orders["PED-1"]["total"]) == "2.0000"  # evt-10, not evt-9
    assert orders["PED-1"]["version_event_id"] == "evt-10/0/000000"
    assert orders["PED-1"]["version_seq"] == 11
    assert orders["PED-2"]["deleted_at"] == AT  # the delete's time, not the batch's
    assert orders["PED-2"]["total"] is None and orders["PED-2"]["currency"] is None
    assert orders["PED-3"]["deleted_at"] is None and str(orders["PED-3"]["total"]) == "4.0000"
    assert orders["PED-4"]["deleted_at"] == AT + timedelta(minutes=1)
    assert (orders["PED-4"]["version_seq"], orders["PED-4"]["currency"]) == (41, None)
    assert orders["PED-5"]["deleted_at"] is not None and orders["PED-5"]["total"] is None
    assert orders["PED-5"]["extra"] == {}
    companies = {row["source_key"]: row for row in state["companies"]}
    assert companies["E1"]["legal_name"] == "Acme Ltda"
    return state


@pytest.mark.integration
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order=st.permutations(range(len(EVENTS))),
    repeats=st.lists(st.integers(0, len(EVENTS) - 1), max_size=4),
    cuts=st.lists(st.integers(0, len(EVENTS) + 4), max_size=5),
)
def test_any_arrival_order_leaves_the_same_rows_and_tombstones(
    dsn: str,
    expected: dict[str, list[dict[str, Any]]],
    order: list[int],
    repeats: list[int],
    cuts: list[int],
) -> None:
    """Shuffled, repeated (a re-read keeps its offset) and cut into batches: the same
    rows, tombstones with their ``deleted_at``, content and version columns included."""
    source_id = f"seq-{uuid.uuid4().hex[:8]}"
    sequence = list(order)
    for position, index in enumerate(repeats):
        sequence.insert(position * 3 % (len(sequence) + 1), index)
    asyncio.run(apply_in_batches(dsn, events_for(source_id, sequence), cuts))
    assert asyncio.run(snapshot(dsn, source_id)) == expected
