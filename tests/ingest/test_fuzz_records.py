"""Fuzzing what happens to the records ingest accepts (issue #20's last two properties),
over the real ingest, broker, transform and PostgreSQL:

- every record of a 2xx is on the raw topic with every value as sent (the body parsed
  again, compared value by value with the event's payload), and after the transform it
  is either a CRM row under its own key or listed in ``transform_rejections`` with its
  identity (source, event id, table, record key);
- distinct keys never merge: as many CRM rows as distinct keys stored. Keys differ in
  case, accents (composed or not), punctuation, look-alike and invisible characters; a
  key's leading and trailing whitespace is not part of it (ERPs pad codes), so keys are
  distinct when they differ after ``strip()``.

Bodies are valid Pedido envelopes with hostile-but-legal values; what the edge refuses
is ``test_fuzz_webhooks``'s. ~10 s."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponte.shared import db
from ponte.shared.settings import Settings
from ponte.transform.processor import BatchProcessor
from tests.conftest import event_of, read_topic, unique_topic, write_sources
from tests.ingest.test_fuzz_webhooks import ThreadedIngest
from tests.ingest.test_webhooks import ERP_SECRET, erp_headers

pytestmark = pytest.mark.integration

SOURCE = "fuzz-records"


@pytest.fixture(scope="module")
def threaded(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder: Path = tmp_path_factory.mktemp("fuzz-records")
    sources = write_sources(
        folder / "sources.yaml", [{"id": SOURCE, "kind": "erp", "secrets": [ERP_SECRET]}]
    )
    settings = base_settings.model_copy(
        update={
            "raw_topic": unique_topic(),
            "changes_topic": unique_topic("ponte.changes"),
            "transform_dead_letter_topic": unique_topic("ponte.transform.dlq"),
            "sources_file": sources,
        }
    )
    ingest = ThreadedIngest(settings)
    try:
        yield ingest, settings
    finally:
        ingest.close()


# Keys that a careless normalisation would fold together.
_KEY_PARTS = st.sampled_from(
    ["A", "a", "É", "E\u0301", "é", "e", "-", "_", ".", "/", ":", " ", "0", "O", "\u0661",
     "ß", "ss", "\u200b", "\ufeff", "İ", "i", "ﬁ", "fi", "€", "🙂"]
)  # fmt: skip
_KEYS = st.lists(_KEY_PARTS, min_size=1, max_size=4).map("".join).filter(lambda k: k.strip())
_VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.sampled_from(["1.234,56", "12,5", "abc", "", " ", "1e5", "-0"]),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_ROWS = st.lists(
    st.tuples(
        _KEYS,
        st.dictionaries(
            st.sampled_from(["total", "moeda", "nota", "campo livre", "Ünïcode"]),
            _VALUES,
            max_size=3,
        ),
    ),
    min_size=1,
    max_size=4,
)


def test_accepted_records_are_stored_as_sent_or_rejected_by_name_and_keys_never_merge(
    threaded: tuple[ThreadedIngest, Settings],
) -> None:
    ingest, config = threaded
    accepted: dict[str, list[dict[str, Any]]] = {}  # delivery id -> rows as sent

    with httpx.Client(timeout=30) as client:

        @settings(
            max_examples=120,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(rows=_ROWS, ascii_only=st.booleans())
        def post(rows: list[tuple[str, dict[str, Any]]], ascii_only: bool) -> None:
            envelope = {
                "id": f"fz-{uuid.uuid4()}",
                "occurred_at": "2024-11-14T12:01:32-03:00",
                "operation": "upsert",
                "table": "Pedido",
                "rows": [{"codigo": key, **fields} for key, fields in rows],
            }
            body = json.dumps(envelope, ensure_ascii=ascii_only).encode()
            response = client.post(
                f"{ingest.url}/webhooks/{SOURCE}", content=body, headers=erp_headers(body)
            )
            assert response.status_code < 500, response.text
            if response.status_code == 202:
                accepted[response.json()["event_id"]] = json.loads(body)["rows"]

        post()

    expected = sum(len(rows) for rows in accepted.values())
    assert expected >= 100, "too few records accepted for the properties to mean much"
    messages = ingest.run(read_topic(config.kafka_bootstrap, config.raw_topic, expect=expected))
    events = [event_of(message) for message in messages]
    assert len(events) == expected  # nothing lost, nothing doubled on the raw topic
    # Stored as sent: every value, by the same JSON semantics (types, big integers, text).
    for event in events:
        assert event["payload"] == accepted[event["delivery_id"]][event["index"]], event
        assert event["record_key"] == str(event["payload"]["codigo"]).strip()

    pool = ingest.run(db.create_pool(config))
    try:
        processor = BatchProcessor(pool, config)
        outbox: list[int] = []
        for start in range(0, len(messages), 200):
            summary = ingest.run(processor.process(list(messages[start : start + 200])))
            outbox += [entry[0] for entry in summary.outbox]
        rows = ingest.run(pool.fetch("SELECT source_key FROM orders WHERE source_id = $1", SOURCE))
        rejected = ingest.run(
            pool.fetch(
                "SELECT event_id, source_table, record_key FROM transform_rejections "
                "WHERE source_id = $1",
                SOURCE,
            )
        )
        ingest.run(pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", outbox))
    finally:
        ingest.run(pool.close())

    stored = {row["source_key"] for row in rows}
    listed = {row["event_id"]: row for row in rejected}
    for event in events:
        if event["event_id"] in listed:
            row = listed[event["event_id"]]
            assert (row["source_table"], row["record_key"]) == ("Pedido", event["record_key"])
        else:
            assert event["record_key"] in stored, (
                f"{event['record_key']!r} neither stored nor listed"
            )
    # Distinct keys never merge: one CRM row per distinct key among the stored records.
    kept = {event["record_key"] for event in events if event["event_id"] not in listed}
    assert stored == kept, (sorted(stored - kept), sorted(kept - stored))
    assert len(rows) == len(stored)
