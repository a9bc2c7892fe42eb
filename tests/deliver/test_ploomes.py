"""Deliver to a local Ploomes stand-in over real HTTP: through the deliver consumer with
the real broker and PostgreSQL, and by calling the connector directly where that shows
one behaviour more plainly (the per-record lock, the retry memory, links, deletes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from ponte.deliver.connectors.base import Outgoing, PairsRefused
from ponte.deliver.connectors.ploomes import PloomesConnector, PloomesTarget
from ponte.deliver.connectors.registry import parse_target
from ponte.deliver.ratelimit import TokenBucket
from ponte.shared.http_policy import RetryableError, TerminalError
from ponte.shared.settings import Settings
from tests.conftest import read_topic
from tests.deliver.conftest import company_change, count_deliveries, produce, run_deliver
from tests.eventually import eventually
from tests.stand_ins.ploomes import PloomesState, create_stand_in, parse_filter
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration

USER_KEY = "stand-in-user-key"
COMPANY = {
    "object_type": "companies",
    "entity_set": "Contacts",
    "type_id": 1,
    "properties": {
        "legal_name": "Name",
        "document": "CNPJ",
        "abc_class": "contact_abc_class",
        "abc_revenue": "contact_abc_revenue",
    },
    "other_properties": {
        "contact_abc_class": "StringValue",
        "contact_abc_revenue": "DecimalValue",
    },
    "lookup_field": "CNPJ",
    "external_id_field": "contact_ponte_id",
}
PERSON = {
    "object_type": "people",
    "entity_set": "Contacts",
    "type_id": 2,
    "properties": {"name": "Name", "document": "CPF"},
    "lookup_field": "CPF",
    "associations": {"company_id": "company"},
    "link_fields": {"company": "CompanyId"},
}


@pytest.fixture
async def ploomes() -> AsyncIterator[tuple[PloomesState, str]]:
    state = PloomesState(user_key=USER_KEY, limit=10_000)
    async with serve(create_stand_in(state)) as url:
        yield state, url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deliver_max_attempts": 10, "deliver_max_age_s": 60.0})


def target_for(url: str, source_id: str, **update: Any) -> PloomesTarget:
    entry: dict[str, Any] = {
        "id": f"pl-{source_id}",
        "kind": "ploomes",
        "base_url": url,
        "user_key": USER_KEY,
        "sources": [source_id],
        "rate_limit": {"requests": 10_000, "per_seconds": 60},
        "batch_size": 10,
        "parallel_records": 8,
        "objects": {"company": COMPANY, "contact": PERSON},
    }
    target = parse_target({**entry, **update})
    assert isinstance(target, PloomesTarget)
    return target


def change(source_id: str, key: str, minute: int, **row: Any) -> dict[str, Any]:
    """A company change whose row id comes from the key's digits, so each key has its own."""
    row_id = int("".join(filter(str.isdigit, key)) or 0) + 1
    return company_change(source_id, key, minute, row_id=row_id, **row)


def by_external_id(state: PloomesState) -> dict[str, list[dict[str, Any]]]:
    """Ploomes Contacts grouped by the external id in their custom field."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in state.records["Contacts"].values():
        for other in record.get("OtherProperties") or []:
            if other["FieldKey"] == "contact_ponte_id":
                found.setdefault(other["StringValue"], []).append(record)
    return found


def cnpj(n: int) -> str:
    return f"{n:014d}"


async def no_dead_letters(settings: Settings) -> None:
    dead = await read_topic(
        settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=0, timeout_s=1
    )
    assert dead == []


# --- through the deliver consumer -------------------------------------------------------


async def test_many_versions_end_as_one_record_per_key_with_latest_values(
    settings: Settings, pool: asyncpg.Pool, ploomes: tuple[PloomesState, str]
) -> None:
    state, url = ploomes
    state.delay_s = 0.005  # widen the window between a lookup and its write
    source_id = f"p-{uuid.uuid4().hex[:8]}"
    target = target_for(url, source_id)
    keys = 60

    def version(minute: int) -> list[dict[str, Any]]:
        return [
            change(source_id, f"E{n}", minute, legal_name=f"Acme {n} v{minute}", document=cnpj(n))
            for n in range(keys)
        ]

    async def latest_everywhere() -> bool:
        return keys == int(
            await pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE target_id = $1 AND state = 'delivered' "
                "AND version_event_id = 'e3'",
                target.id,
            )
        )

    async def changes_arrive() -> None:
        await produce(settings, version(1))
        await eventually(  # the first versions are in Ploomes ...
            lambda: count_deliveries(pool, target),
            satisfied=lambda delivered: delivered >= keys,
            timeout_s=60,
            message=f"the first versions of {keys} keys delivered",
        )
        # ... then two producers at once: a key's v2 and v3 race, in either order.
        await asyncio.gather(produce(settings, version(2)), produce(settings, version(3)))

    await asyncio.gather(
        changes_arrive(), run_deliver(settings, pool, target, latest_everywhere, timeout_s=60)
    )
    records = by_external_id(state)
    assert len(state.records["Contacts"]) == keys
    for n in range(keys):
        (record,) = records[f"{source_id}/company/E{n}"]
        assert record["Name"] == f"Acme {n} v3" and record["CNPJ"] == cnpj(n)
        assert record["TypeId"] == 1
    assert sum(1 for method, *_ in state.writes if method == "POST") == keys
    assert sum(1 for method, *_ in state.writes if method == "PATCH") >= keys
    rows = await pool.fetch("SELECT crm_id FROM deliveries WHERE target_id = $1", target.id)
    assert {row["crm_id"] for row in rows} == {str(i) for i in state.records["Contacts"]}
    await no_dead_letters(settings)


async def test_company_created_by_hand_is_updated_and_its_id_stored(
    settings: Settings, pool: asyncpg.Pool, ploomes: tuple[PloomesState, str]
) -> None:
    state, url = ploomes
    source_id = f"p-{uuid.uuid4().hex[:8]}"
    target = target_for(url, source_id)
    by_hand = state.add("Contacts", {"Name": "ACME (digitado)", "CNPJ": cnpj(7), "TypeId": 1})
    person = state.add("Contacts", {"Name": "Same number, a person", "CNPJ": cnpj(7), "TypeId": 2})
    await produce(settings, [change(source_id, "E7", 1, legal_name="Acme Ltda", document=cnpj(7))])

    async def done() -> bool:
        return await count_deliveries(pool, target) == 1

    await run_deliver(settings, pool, target, done, timeout_s=60)
    assert len(state.records["Contacts"]) == 2  # nothing created
    assert state.records["Contacts"][by_hand["Id"]]["Name"] == "Acme Ltda"
    assert state.records["Contacts"][person["Id"]]["Name"] == "Same number, a person"
    assert [(m, i) for m, _, i, _ in state.writes] == [("PATCH", by_hand["Id"])]
    crm_id = await pool.fetchval(
        "SELECT crm_id FROM deliveries WHERE target_id = $1 AND source_key = 'E7'", target.id
    )
    assert crm_id == str(by_hand["Id"])


async def test_custom_fields_land_in_other_properties(
    settings: Settings, pool: asyncpg.Pool, ploomes: tuple[PloomesState, str]
) -> None:
    state, url = ploomes
    source_id = f"p-{uuid.uuid4().hex[:8]}"
    target = target_for(url, source_id)
    row = {"legal_name": "Acme", "document": cnpj(1), "abc_class": "A", "abc_revenue": "1234.50"}
    await produce(settings, [change(source_id, "E1", 1, **row)])

    async def done() -> bool:
        return await count_deliveries(pool, target) == 1

    await run_deliver(settings, pool, target, done, timeout_s=60)
    (record,) = state.records["Contacts"].values()
    assert "contact_abc_class" not in record and "contact_abc_revenue" not in record
    others = {o["FieldKey"]: o for o in record["OtherProperties"]}
    assert others["contact_abc_class"] == {"FieldKey": "contact_abc_class", "StringValue": "A"}
    assert others["contact_abc_revenue"] == {
        "FieldKey": "contact_abc_revenue",
        "DecimalValue": 1234.5,
    }
    assert others["contact_ponte_id"]["StringValue"] == f"{source_id}/company/E1"


async def test_refused_record_is_dead_lettered_and_the_rest_delivered(
    settings: Settings, pool: asyncpg.Pool, ploomes: tuple[PloomesState, str]
) -> None:
    state, url = ploomes
    source_id = f"p-{uuid.uuid4().hex[:8]}"
    target = target_for(url, source_id)
    fine = [
        change(source_id, f"OK{n}", 1, legal_name=f"Fine {n}", document=cnpj(n)) for n in range(5)
    ]
    nameless = change(source_id, "BAD9", 1, legal_name=None, document=cnpj(9))
    await produce(settings, [*fine[:2], nameless, *fine[2:]])

    async def done() -> bool:
        return (
            await count_deliveries(pool, target) == 5
            and await count_deliveries(pool, target, "failed") == 1
        )

    await run_deliver(settings, pool, target, done, timeout_s=60)
    dead = await read_topic(settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=1)
    assert len(dead) == 1
    assert dead[0].key == f"{source_id}/company/BAD9".encode()
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert "Name" in headers["ponte-dlq-reason"] and "required" in headers["ponte-dlq-reason"]
    assert headers["ponte-dlq-attempts"] == "1"  # refused: not retried
    assert len(state.records["Contacts"]) == 5
    assert sorted(r["Name"] for r in state.records["Contacts"].values()) == [
        f"Fine {n}" for n in range(5)
    ]


async def test_5xx_storm_and_rate_limits_are_retried_through(
    settings: Settings, pool: asyncpg.Pool, ploomes: tuple[PloomesState, str]
) -> None:
    state, url = ploomes
    state.limit, state.window_s = 40, 1.0  # the stand-in's quota ...
    source_id = f"p-{uuid.uuid4().hex[:8]}"
    target = target_for(url, source_id, rate_limit={"requests": 400, "per_seconds": 1})
    # ... ten times smaller than what the target believes: 429s are certain.
    keys = 40
    state.fail_next = [503, 503, 500, 502, 503, 503, 504]
    await produce(
        settings,
        [
            change(source_id, f"E{n}", 1, legal_name=f"Acme {n}", document=cnpj(n))
            for n in range(keys)
        ],
    )

    async def done() -> bool:
        return await count_deliveries(pool, target) == keys

    await run_deliver(settings, pool, target, done, timeout_s=90)
    assert state.fail_next == [] and state.rate_limited > 0
    records = by_external_id(state)
    assert len(state.records["Contacts"]) == keys
    assert all(len(records[f"{source_id}/company/E{n}"]) == 1 for n in range(keys))
    await no_dead_letters(settings)


# --- the connector itself ---------------------------------------------------------------


@pytest.fixture
async def connector(
    ploomes: tuple[PloomesState, str],
) -> AsyncIterator[tuple[PloomesConnector, PloomesState]]:
    state, url = ploomes
    target = target_for(url, "direct", parallel_records=16)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield PloomesConnector.for_target(target, client, TokenBucket(10_000, 60)), state


def company(n: int, name: str, **extra: Any) -> Outgoing:
    properties = {"Name": name, "CNPJ": cnpj(n), "contact_abc_class": None, **extra}
    return Outgoing(f"erp/company/E{n}", properties)


async def test_concurrent_writes_of_the_same_records_never_duplicate(
    connector: tuple[PloomesConnector, PloomesState],
) -> None:
    ploomes, state = connector
    state.delay_s = 0.02  # every lookup answers slowly: the race window is wide open
    first = [company(n, f"Acme {n} a") for n in range(20)]
    second = [company(n, f"Acme {n} b") for n in range(20)]
    # Another source's record with the same CNPJ as E3: also one Ploomes company.
    other_source = Outgoing("crm2/company/X3", {"Name": "Acme 3 c", "CNPJ": cnpj(3)})
    outcomes = await asyncio.gather(
        ploomes.upsert_batch("companies", first),
        ploomes.upsert_batch("companies", second),
        ploomes.upsert_batch("companies", [other_source]),
    )
    assert all(not outcome.failed for outcome in outcomes)
    assert len(state.records["Contacts"]) == 20
    assert outcomes[0].delivered == outcomes[1].delivered
    assert outcomes[2].delivered["crm2/company/X3"] == outcomes[0].delivered["erp/company/E3"]
    assert ploomes._locks.keys_in_use == 0  # every lock forgotten once free


async def test_known_crm_id_is_patched_and_a_deleted_one_recreated(
    connector: tuple[PloomesConnector, PloomesState],
) -> None:
    ploomes, state = connector
    created = await ploomes.upsert_batch("companies", [company(1, "Acme")])
    crm_id = created.delivered["erp/company/E1"]
    state.requests.clear()
    record = company(1, "Acme renamed")
    record.crm_id = crm_id
    updated = await ploomes.upsert_batch("companies", [record])
    assert updated.delivered == {"erp/company/E1": crm_id}
    assert [method for method, _ in state.requests] == ["PATCH"]  # no lookup
    assert state.records["Contacts"][int(crm_id)]["Name"] == "Acme renamed"

    del state.records["Contacts"][int(crm_id)]  # someone deleted it in Ploomes
    record.properties["Name"] = "Acme again"
    again = await ploomes.upsert_batch("companies", [record])
    (new_id,) = again.delivered.values()
    assert new_id != crm_id and len(state.records["Contacts"]) == 1
    assert state.records["Contacts"][int(new_id)]["Name"] == "Acme again"


async def test_retryable_failure_retries_the_batch_without_resending_what_was_written(
    connector: tuple[PloomesConnector, PloomesState],
) -> None:
    ploomes, state = connector
    records = [company(n, f"Acme {n}") for n in range(5)]
    state.fail_on = {'"Name":"Acme 3"': [503]}  # Acme 3's create fails once
    with pytest.raises(RetryableError) as raised:
        await ploomes.upsert_batch("companies", records)
    assert raised.value.status == 503 and "1 of 5" in str(raised.value)
    assert len(state.records["Contacts"]) == 4  # the others were written meanwhile
    state.requests.clear()
    outcome = await ploomes.upsert_batch("companies", records)
    assert sorted(outcome.delivered) == sorted(r.external_id for r in records)
    assert len(state.records["Contacts"]) == 5
    # Only Acme 3 is sent again: two lookups and its create.
    assert [method for method, _ in state.requests] == ["GET", "GET", "POST"]


async def test_custom_value_of_the_wrong_kind_refuses_only_that_record(
    connector: tuple[PloomesConnector, PloomesState],
) -> None:
    ploomes, state = connector
    good = company(1, "Acme", contact_abc_revenue="10.5")
    bad = company(2, "Bad", contact_abc_revenue="ten")
    outcome = await ploomes.upsert_batch("companies", [good, bad])
    assert list(outcome.delivered) == [good.external_id]
    assert "contact_abc_revenue" in outcome.failed[bad.external_id]
    assert len(state.records["Contacts"]) == 1


async def test_two_matches_are_refused_not_guessed(
    connector: tuple[PloomesConnector, PloomesState],
) -> None:
    ploomes, state = connector
    for name in ("Acme", "Acme (duplicada)"):
        state.add("Contacts", {"Name": name, "CNPJ": cnpj(4), "TypeId": 1})
    outcome = await ploomes.upsert_batch("companies", [company(4, "Acme")])
    assert (
        f"2 Contacts have CNPJ '{cnpj(4)}' (Ids 40000001, 40000002)"
        in outcome.failed["erp/company/E4"]
    )
    assert state.writes == []


async def test_wrong_user_key_stops_the_batch(
    ploomes: tuple[PloomesState, str],
) -> None:
    state, url = ploomes
    target = target_for(url, "direct", user_key="not-the-key")
    async with httpx.AsyncClient(base_url=url) as client:
        connector = PloomesConnector.for_target(target, client, TokenBucket(100, 1))
        with pytest.raises(TerminalError) as raised:
            await connector.upsert_batch("companies", [company(n, "Acme") for n in range(3)])
    assert raised.value.status == 401 and state.writes == []


async def test_links_deletes_and_read_back(
    connector: tuple[PloomesConnector, PloomesState],
) -> None:
    ploomes, state = connector
    firm = (await ploomes.upsert_batch("companies", [company(1, "Acme")])).delivered
    person = Outgoing("erp/contact/C1", {"Name": "Ana", "CPF": "12345678909"})
    people = (await ploomes.upsert_batch("people", [person])).delivered
    company_id, person_id = firm["erp/company/E1"], people["erp/contact/C1"]
    assert state.records["Contacts"][int(person_id)]["TypeId"] == 2

    await ploomes.associate("people", "companies", [(person_id, company_id)])
    assert state.records["Contacts"][int(person_id)]["CompanyId"] == int(company_id)
    with pytest.raises(PairsRefused) as refused:
        await ploomes.associate("people", "companies", [(person_id, company_id), ("9", "1")])
    assert list(refused.value.refused) == [("9", "1")]
    with pytest.raises(TerminalError, match="link_fields"):
        await ploomes.associate("companies", "people", [(company_id, person_id)])

    read = await ploomes.read_back("companies", company_id)
    assert read is not None and read["Name"] == "Acme"
    assert {"FieldKey": "contact_ponte_id", "StringValue": "erp/company/E1"} in read[
        "OtherProperties"
    ]
    await ploomes.delete_batch("companies", [company_id, "99999"])  # 99999: already gone
    assert int(company_id) not in state.records["Contacts"]
    assert await ploomes.read_back("companies", company_id) is None


# --- configuration and the stand-in's filter ---------------------------------------------


@pytest.mark.parametrize(
    ("change_to", "message"),
    [
        ({"entity_set": None}, "entity_set: 'companies' is not one of"),
        ({"type_id": None}, "type_id: required for Contacts"),
        ({"lookup_field": None, "external_id_field": None}, "set lookup_field"),
        ({"lookup_field": "CPF"}, "lookup_field: 'CPF' is not a field in properties"),
        ({"lookup_field": "contact_abc_class"}, "lookup_field: 'contact_abc_class' is a custom"),
        ({"other_properties": {"contact_x": "StringValue"}}, "other_properties: 'contact_x'"),
        ({"other_properties": {"Name": "TextValue"}}, "other_properties.Name"),
        ({"link_fields": {"deal": "DealId"}}, "link_fields: 'deal' is not linked"),
    ],
)
def test_bad_configuration_names_the_field(change_to: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        target_for("http://x", "cfg", objects={"company": {**COMPANY, **change_to}})


def test_object_types_must_be_unique() -> None:
    objects = {"company": COMPANY, "contact": {**PERSON, "object_type": "companies"}}
    with pytest.raises(ValidationError, match=r"objects\.contact\.object_type: 'companies'"):
        target_for("http://x", "cfg", objects=objects)


def test_user_key_never_shown() -> None:
    target = target_for("http://x", "cfg")
    assert USER_KEY not in repr(target) and USER_KEY not in str(target)


def test_stand_in_filter_parses_what_the_connector_sends() -> None:
    assert parse_filter(
        "TypeId eq 1 and OtherProperties/any(o: o/FieldKey eq 'k' and o/StringValue eq 'a''b')"
    ) == [("field", "TypeId", 1), ("other", "k", "StringValue", "a'b")]
    with pytest.raises(ValueError, match="unsupported"):
        parse_filter("contains(Name, 'x')")
