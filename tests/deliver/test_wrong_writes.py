"""Silent wrong writes: the failures a CRM integration must never have, each against a
stand-in that behaves the way that makes it happen (real HTTP, and the real deliver
consumer, broker and PostgreSQL where the wait for a parent is the point).

1. A search hit is a match only if its natural key is exactly the record's: the REST
   stand-in's search matches substrings (Django's ``icontains``), Ploomes' ``eq`` filter
   matches substrings too, and the exact record may sit on a later page.
2. A reference column never sends Ponte's row id: mapping it as a plain property is
   refused at load; ``references`` sends the parent's id in that CRM, waiting until the
   parent is delivered, even though a CRM record with the Ponte id's number exists.
3. Duplicate YAML keys: ``tests/shared/test_config_files.py``.
4. The guard: an update by a stored CRM id whose record now has another natural key is
   refused with both values, and a key that really changed still goes through.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from ponte.deliver.connectors.base import Outgoing, RecordMismatch, check_same_record
from ponte.deliver.connectors.ploomes import PloomesConnector, PloomesTarget
from ponte.deliver.connectors.registry import load_targets, parse_target
from ponte.deliver.connectors.rest import RestConnector, RestTarget
from ponte.deliver.ratelimit import TokenBucket
from ponte.shared.settings import Settings
from tests.deliver.conftest import company_change, delivering, produce, until
from tests.stand_ins.ploomes import PloomesState
from tests.stand_ins.ploomes import create_stand_in as create_ploomes
from tests.stand_ins.rest_crm import RestCrmState, create_stand_in
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration

STATE = RestCrmState()
LOGIN = {
    "type": "login",
    "path": "/v1/auth/login",
    "body": {"email": STATE.email, "password": STATE.password},
    "token": "data.token",
    "expires_in": "data.expires_in",
}
PAGES = {
    "style": "cursor",
    "path": "additional_data.pagination.next_start",
    "param": "start",
    "more": "additional_data.pagination.more_items_in_collection",
}


def calls(object_type: str) -> dict[str, Any]:
    return {
        "create": {"method": "POST", "path": f"/v1/{object_type}"},
        "id_path": "data.id",
        "update": {"method": "PUT", "path": f"/v1/{object_type}/{{crm_id}}"},
        "read": {"method": "GET", "path": f"/v1/{object_type}/{{crm_id}}"},
        "read_path": "data",
    }


def search(object_type: str, field: str, **more: Any) -> dict[str, Any]:
    return {
        "path": f"/v1/{object_type}/search",
        "query": {"term": "{key}", "fields": field, "exact_match": "true"},
        "results": "data.items",
        "id": "item.id",
        "pages": PAGES,
        **more,
    }


PERSONS = {
    "object_type": "persons",
    "properties": {"name": "name", "email": "email"},
    "natural_key": "email",
    "search": search("persons", "email", key="item.email", match="casefold"),
    **calls("persons"),
}
ORGANIZATIONS = {
    "object_type": "organizations",
    "properties": {"legal_name": "name", "document": "custom_fields.cnpj"},
    "natural_key": "document",
    "search": search("organizations", "cnpj", key="item.custom_fields", match="digits"),
    **calls("organizations"),
}


def rest_target(url: str, source_id: str = "direct", **objects: Any) -> RestTarget:
    target = parse_target(
        {
            "id": f"rest-{source_id}",
            "kind": "rest",
            "base_url": url,
            "auth": LOGIN,
            "sources": [source_id],
            "rate_limit": {"requests": 1000, "per_seconds": 1},
            "objects": objects,
        }
    )
    assert isinstance(target, RestTarget)
    return target


@pytest.fixture
async def crm() -> AsyncIterator[tuple[RestCrmState, str]]:
    state = RestCrmState(substring_search=True)
    async with serve(create_stand_in(state)) as url:
        yield state, url


async def connect(url: str, target: RestTarget) -> tuple[RestConnector, httpx.AsyncClient]:
    client = httpx.AsyncClient(base_url=url, timeout=5.0)
    return RestConnector.for_target(target, client, TokenBucket(1000, 1.0)), client


def person(key: str, name: str, email: str) -> Outgoing:
    return Outgoing(f"erp/contact/{key}", {"name": name, "email": email})


# --- 1. a search hit is not a match until its key is exactly the record's -------------


async def test_a_substring_hit_is_not_a_match_so_ria_is_created_beside_maria(
    crm: tuple[RestCrmState, str],
) -> None:
    state, url = crm
    maria = state.add("persons", {"name": "Maria", "email": "maria@acme.example"}, 7001)
    connector, client = await connect(url, rest_target(url, contact=PERSONS))
    async with client:
        outcome = await connector.upsert_batch("persons", [person("P1", "Ria", "ria@acme.example")])
    assert not outcome.failed
    ria_id = outcome.delivered["erp/contact/P1"]
    assert ria_id != "7001"
    assert state.records["persons"]["7001"] == maria  # untouched
    assert state.records["persons"][ria_id]["email"] == "ria@acme.example"
    assert [w[0] for w in state.writes] == ["create"]


async def test_three_substring_hits_and_no_exact_one_create_rather_than_refuse(
    crm: tuple[RestCrmState, str],
) -> None:
    state, url = crm
    for record_id, email in ((7001, "a@acme.example.br"), (7002, "xa@acme.example"),
                             (7003, "ya@acme.example")):  # fmt: skip
        state.add("persons", {"name": email, "email": email}, record_id)
    connector, client = await connect(url, rest_target(url, contact=PERSONS))
    async with client:
        outcome = await connector.upsert_batch("persons", [person("P2", "A", "a@acme.example")])
    assert not outcome.failed, outcome.failed
    created = outcome.delivered["erp/contact/P2"]
    assert created not in {"7001", "7002", "7003"}
    assert [record["name"] for record in state.records["persons"].values()][:3] == [
        "a@acme.example.br", "xa@acme.example", "ya@acme.example",
    ]  # fmt: skip


async def test_two_exact_matches_are_refused_listing_what_was_found(
    crm: tuple[RestCrmState, str],
) -> None:
    state, url = crm
    state.add("persons", {"name": "Ana", "email": "Ana@Acme.example"}, 7001)
    state.add("persons", {"name": "Ana bis", "email": "ana@acme.example "}, 7002)
    state.add("persons", {"name": "Mariana", "email": "mariana@acme.example"}, 7003)
    connector, client = await connect(url, rest_target(url, contact=PERSONS))
    async with client:
        outcome = await connector.upsert_batch("persons", [person("P3", "Ana", "ana@acme.example")])
    reason = outcome.failed["erp/contact/P3"]
    assert "2 records in the CRM have email 'ana@acme.example'" in reason
    assert "id 7001: 'Ana@Acme.example'" in reason and "id 7002: 'ana@acme.example '" in reason
    assert "7003" not in reason
    assert state.writes == []


async def test_the_exact_record_on_a_later_page_is_found_and_updated(
    crm: tuple[RestCrmState, str],
) -> None:
    state, url = crm
    state.search_page_size = 2
    for n, email in enumerate(["xbo@a.example", "bo@a.example.org", "abo@a.example",
                               "obo@a.example", "bo@a.example"]):  # fmt: skip
        state.add("persons", {"name": f"n{n}", "email": email}, 7001 + n)
    connector, client = await connect(url, rest_target(url, contact=PERSONS))
    async with client:
        outcome = await connector.upsert_batch("persons", [person("P4", "Bo", "bo@a.example")])
    assert outcome.delivered == {"erp/contact/P4": "7005"}
    assert [w[:3] for w in state.writes] == [("update", "persons", "7005")]
    assert state.calls.count(("GET", "/v1/persons/search")) == 3  # starts 0, 2, 4


async def test_without_a_key_path_each_result_is_read_back_and_checked(
    crm: tuple[RestCrmState, str],
) -> None:
    state, url = crm
    state.add("organizations", {"name": "Other", "custom_fields": {"cnpj": "911222333000181"}},
              7001)  # fmt: skip
    unkeyed = {**ORGANIZATIONS, "search": search("organizations", "cnpj", match="digits")}
    connector, client = await connect(url, rest_target(url, company=unkeyed))
    async with client:
        outcome = await connector.upsert_batch(
            "organizations",
            [Outgoing("erp/company/E1", {"name": "Acme", "custom_fields.cnpj": "11222333000181"})],
        )
    assert outcome.delivered["erp/company/E1"] != "7001"
    assert ("GET", "/v1/organizations/7001") in state.calls  # read back, not this one
    assert state.records["organizations"]["7001"]["name"] == "Other"


def test_a_search_that_cannot_check_its_hits_is_refused_at_load() -> None:
    unkeyed = {**PERSONS, "search": search("persons", "email"), "verify_updates": False}
    del unkeyed["read"]
    with pytest.raises(ValueError, match=r"set key .* or a read call"):
        rest_target("http://crm.invalid", contact=unkeyed)


def test_an_update_guard_without_a_read_call_is_refused_at_load() -> None:
    unread = {**PERSONS}
    del unread["read"]
    with pytest.raises(ValueError, match=r"verify_updates: set a read call"):
        rest_target("http://crm.invalid", contact=unread)
    rest_target("http://crm.invalid", contact={**unread, "verify_updates": False})  # opted out


async def test_ploomes_takes_no_substring_match_of_its_filter() -> None:
    state = PloomesState(user_key="k", limit=10_000, substring_filter=True)
    stranger = state.add("Contacts", {"Name": "Outra", "CNPJ": "9911222333000181", "TypeId": 1})
    target = parse_target(
        {
            "id": "pl-direct",
            "kind": "ploomes",
            "base_url": "http://ploomes.invalid",
            "user_key": "k",
            "objects": {
                "company": {
                    "object_type": "companies",
                    "entity_set": "Contacts",
                    "type_id": 1,
                    "properties": {"legal_name": "Name", "document": "CNPJ"},
                    "lookup_field": "CNPJ",
                    "external_id_field": "contact_ponte_id",
                }
            },
        }
    )
    assert isinstance(target, PloomesTarget)
    async with serve(create_ploomes(state)) as url, httpx.AsyncClient(base_url=url) as client:
        ploomes = PloomesConnector.for_target(target, client, TokenBucket(10_000, 60))
        record = Outgoing("erp/company/E1", {"Name": "Acme", "CNPJ": "11222333000181"})
        outcome = await ploomes.upsert_batch("companies", [record])
        # Ponte's id is a substring of the stranger's too ("erp/company/E1" in "...E10").
        state.add("Contacts", {"Name": "Dez", "CNPJ": "1", "TypeId": 1, "OtherProperties": [
            {"FieldKey": "contact_ponte_id", "StringValue": "erp/company/E10"}]})  # fmt: skip
        again = await ploomes.upsert_batch(
            "companies", [Outgoing("erp/company/E1", {"Name": "Acme 2", "CNPJ": ""})]
        )
    crm_id = outcome.delivered["erp/company/E1"]
    assert crm_id != str(stranger["Id"])
    assert state.records["Contacts"][stranger["Id"]] == stranger  # untouched
    assert again.delivered["erp/company/E1"] == crm_id  # found by its exact external id
    assert state.records["Contacts"][int(crm_id)]["Name"] == "Acme 2"


# --- 2. a reference column never sends Ponte's row id -----------------------------------


def test_a_reference_column_mapped_as_a_property_is_refused_at_load(tmp_path: Path) -> None:
    entry = {
        "id": "crm",
        "kind": "rest",
        "base_url": "http://crm.invalid",
        "objects": {
            "company": ORGANIZATIONS,
            "order": {
                "object_type": "deals",
                "properties": {"code": "title", "company_id": "org_id"},
                **calls("deals"),
            },
        },
    }
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": [entry]}), encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_targets(path)
    message = str(error.value)
    assert "objects.order.properties.company_id" in message
    assert "Ponte's own row id of a company" in message
    assert "'references: {company_id: org_id}'" in message
    entry["objects"]["order"]["properties"] = {"id": "ponte_row"}
    path.write_text(yaml.safe_dump({"targets": [entry]}), encoding="utf-8")
    with pytest.raises(ValueError, match="'id' is Ponte's own row id"):
        load_targets(path)


def order_change(source_id: str, key: str, minute: int, *, row_id: int, company_id: int
                 ) -> dict[str, Any]:  # fmt: skip
    change = company_change(source_id, key, minute, row_id=row_id)
    change.update(entity="order", row={"code": key, "total": "10.00", "company_id": company_id})
    return change


async def delivery(pool: asyncpg.Pool, target_id: str, key: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM deliveries WHERE target_id = $1 AND source_key = $2", target_id, key
    )
    return row


async def test_an_order_waits_for_its_company_and_carries_its_crm_id_not_pontes(
    settings: Settings, pool: asyncpg.Pool, crm: tuple[RestCrmState, str]
) -> None:
    state, url = crm
    source_id = f"w-{uuid.uuid4().hex[:8]}"
    company_row = 90_000_000 + int(uuid.uuid4().int % 1_000_000)
    # A CRM organisation whose id happens to be the Ponte row id of the order's company.
    stranger = state.add("organizations", {"name": "Stranger", "custom_fields": {}}, company_row)
    order = {
        "object_type": "deals",
        "properties": {"code": "title"},
        "references": {"company_id": {"to": "org_id", "type": "integer"}},
        **calls("deals"),
    }
    target = rest_target(url, source_id, company=ORGANIZATIONS, order=order)
    await produce(settings, [order_change(source_id, "PED-1", 1, row_id=7, company_id=company_row)])
    async with delivering(settings, pool, target) as task:

        async def waiting() -> bool:
            row = await delivery(pool, target.id, "PED-1")
            return row is not None and row["state"] == "waiting"

        await until(task, waiting)
        row = await delivery(pool, target.id, "PED-1")
        assert row is not None
        assert f"waiting for company row {company_row} (its company_id)" in row["last_error"]
        assert "deals" not in state.records  # nothing sent while the parent is missing

        await produce(
            settings,
            [company_change(source_id, "EMP-1", 1, row_id=company_row, legal_name="Acme",
                            document="11.222.333/0001-81")],
        )  # fmt: skip

        async def delivered() -> bool:
            row = await delivery(pool, target.id, "PED-1")
            return row is not None and row["state"] == "delivered"

        await until(task, delivered)
    company = await delivery(pool, target.id, "EMP-1")
    assert company is not None and company["crm_key"] == "11.222.333/0001-81"
    (deal,) = state.records["deals"].values()
    assert deal["org_id"] == int(company["crm_id"]) != company_row
    assert state.records["organizations"][str(company_row)] == stranger
    left = await pool.fetchval(
        "SELECT count(*) FROM waiting_deliveries WHERE target_id = $1", target.id
    )
    assert left == 0


# --- 4. the guard: never update a record that carries another natural key ---------------


async def test_an_update_by_a_stored_id_is_refused_when_the_crm_record_is_another(
    crm: tuple[RestCrmState, str],
) -> None:
    state, url = crm
    target = rest_target(url, company=ORGANIZATIONS)
    first, client = await connect(url, target)
    async with client:
        made = await first.upsert_batch(
            "organizations",
            [Outgoing("erp/company/E1", {"name": "Acme", "custom_fields.cnpj": "11222333000181"})],
        )
    crm_id = made.delivered["erp/company/E1"]
    assert made.keys == {"erp/company/E1": "11222333000181"}
    # In the CRM, the record is merged into another company's (its CNPJ changes).
    state.records["organizations"][crm_id]["custom_fields"]["cnpj"] = "44555666000199"
    before = dict(state.records["organizations"][crm_id])

    restarted, client = await connect(url, target)  # a new process: nothing learned
    async with client:
        outcome = await restarted.upsert_batch(
            "organizations",
            [Outgoing("erp/company/E1", {"name": "Acme v2", "custom_fields.cnpj": "11222333000181"},
                      crm_id=crm_id, crm_key="11222333000181")],
        )  # fmt: skip
        reason = outcome.failed["erp/company/E1"]
        assert f"organizations {crm_id} in the CRM has document '44555666000199'" in reason
        assert "this change has '11222333000181'" in reason
        assert state.records["organizations"][crm_id] == before  # not overwritten

        # A CNPJ that really changed in the ERP: the CRM still has the one Ponte last
        # delivered, so the update goes through.
        moved = await restarted.upsert_batch(
            "organizations",
            [Outgoing("erp/company/E1", {"name": "Acme v3", "custom_fields.cnpj": "77888999000155"},
                      crm_id=crm_id, crm_key="44555666000199")],
        )  # fmt: skip
    assert moved.delivered == {"erp/company/E1": crm_id}
    assert state.records["organizations"][crm_id]["custom_fields"]["cnpj"] == "77888999000155"


@pytest.mark.parametrize(
    ("found", "refused"),
    [
        ("11222333000181", False),  # the change's own key
        ("11.222.333/0001-81", False),  # the same digits, as match: digits compares
        ("44555666000199", False),  # the key last delivered: it changed in the source
        (None, False),  # empty in the CRM proves nothing either way
        ([], False),
        ([{"value": "", "primary": True}], False),
        ([{"value": "x", "primary": True}, {"value": "11222333000181"}], False),
        ("99888777000166", True),  # another record's key
        ([{"value": "99888777000166"}], True),
    ],
)
def test_the_update_guard_refuses_only_another_records_key(found: object, refused: bool) -> None:
    def check() -> None:
        check_same_record(
            what="organizations 7 in the CRM", key_name="document", found=found,
            key="11222333000181", last_delivered="44555666000199", match="digits",
        )  # fmt: skip

    if refused:
        with pytest.raises(RecordMismatch, match="it is another record"):
            check()
    else:
        check()


async def test_a_waiting_change_is_replaced_by_a_newer_one_and_an_older_replay_is_skipped(
    settings: Settings, pool: asyncpg.Pool, crm: tuple[RestCrmState, str]
) -> None:
    """Versions hold while a change waits: v2 replaces the waiting v1, a replay of v1
    arriving later is skipped, and once the company is delivered only v2 reaches the CRM."""
    state, url = crm
    source_id = f"w-{uuid.uuid4().hex[:8]}"
    company_row = 91_000_000 + int(uuid.uuid4().int % 1_000_000)
    order = {
        "object_type": "deals",
        "properties": {"code": "title"},
        "references": {"company_id": "org_id"},
        **calls("deals"),
    }
    target = rest_target(url, source_id, company=ORGANIZATIONS, order=order)

    def version(minute: int) -> dict[str, Any]:
        change = order_change(source_id, "PED-9", minute, row_id=9, company_id=company_row)
        change["row"]["code"] = f"PED-9 v{minute}"
        return change

    async def waiting_version() -> str | None:
        found: str | None = await pool.fetchval(
            "SELECT change->'event'->'row'->>'code' FROM waiting_deliveries "
            "WHERE target_id = $1 AND source_key = 'PED-9'",
            target.id,
        )
        return found

    async with delivering(settings, pool, target) as task:
        await produce(settings, [version(1)])
        await until(task, lambda: _equals(waiting_version, "PED-9 v1"))
        await produce(settings, [version(2), version(1)])  # newer, then an older replay
        await until(task, lambda: _equals(waiting_version, "PED-9 v2"))
        company = company_change(
            source_id, "EMP-9", 1, row_id=company_row, legal_name="Acme", document="1"
        )
        await produce(settings, [company])

        async def delivered() -> bool:
            row = await delivery(pool, target.id, "PED-9")
            return row is not None and row["state"] == "delivered"

        await until(task, delivered)
    titles = [w[3].get("title") for w in state.writes if w[1] == "deals"]
    assert titles == ["PED-9 v2"], titles  # v1 never reached the CRM
    assert await waiting_version() is None


async def _equals(read: Any, expected: str) -> bool:
    return bool(await read() == expected)
