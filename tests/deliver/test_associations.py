"""Associations (deal-company, contact-company, line item-deal) and reading records back,
against the HubSpot stand-in over real HTTP, the real broker and PostgreSQL, through the
DeliverConsumer: links wait for records that arrive later, are made once, and a refused
link stays visible with its reason."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from ponte.deliver.app import build_connectors
from ponte.deliver.connectors.hubspot import HubSpotTarget
from ponte.deliver.connectors.registry import parse_target
from ponte.deliver.targets import Target
from ponte.shared.settings import Settings
from tests.conftest import read_topic
from tests.deliver.conftest import produce, run_deliver
from tests.stand_ins.hubspot import HubSpotState, create_stand_in
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration


@pytest.fixture
async def hubspot() -> AsyncIterator[tuple[HubSpotState, str]]:
    state = HubSpotState(limit=50, interval_s=1.0)
    async with serve(create_stand_in(state)) as url:
        yield state, url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deliver_max_attempts": 4, "deliver_max_age_s": 20.0})


OBJECTS: dict[str, Any] = {
    "company": {"object_type": "companies", "properties": {"legal_name": "name"}},
    "contact": {
        "object_type": "contacts",
        "properties": {"email": "email"},
        "associations": {"company_id": "company"},
    },
    "order": {
        "object_type": "deals",
        "properties": {"code": "dealname"},
        "associations": {"company_id": "company", "contact_id": "contact"},
    },
    "order_item": {
        "object_type": "line_items",
        "properties": {"description": "name"},
        "associations": {"order_id": "order"},
    },
}


def linking_target(url: str, source_id: str) -> HubSpotTarget:
    return HubSpotTarget(
        id=f"hs-{source_id}",
        kind="hubspot",
        base_url=url,
        token="pat-test",
        sources=[source_id],
        rate_limit={"requests": 50, "per_seconds": 1.0},
        objects=OBJECTS,
    )


def event(
    entity: str, source_id: str, key: str, row_id: int, minute: int = 1, **row: Any
) -> dict[str, Any]:
    return {
        "entity": entity,
        "source_id": source_id,
        "source_key": key,
        "row_id": row_id,
        "operation": "upsert",
        "changed": list(row),
        "version": {"at": f"2024-11-14T15:{minute:02d}:00+00:00", "event_id": f"e{minute}"},
        "row": row,
    }


async def links(pool: asyncpg.Pool, target: Target) -> dict[tuple[str, str], asyncpg.Record]:
    rows = await pool.fetch("SELECT * FROM associations WHERE target_id = $1", target.id)
    return {(r["from_entity"], r["column_name"]): r for r in rows}


async def link_states(pool: asyncpg.Pool, target: Target) -> dict[tuple[str, str], str]:
    return {key: row["state"] for key, row in (await links(pool, target)).items()}


def crm_id(state: HubSpotState, object_type: str, source_id: str, entity: str, key: str) -> str:
    return str(state.objects[object_type][f"{source_id}/{entity}/{key}"]["id"])


async def test_deal_before_its_company_is_linked_once_the_company_arrives(
    settings: Settings, pool: asyncpg.Pool, hubspot: tuple[HubSpotState, str]
) -> None:
    state, url = hubspot
    source_id = f"a-{uuid.uuid4().hex[:8]}"
    target = linking_target(url, source_id)
    await produce(settings, [event("order", source_id, "PED-1", 11, code="PED-1", company_id=501)])

    async def order_waits() -> bool:
        return await link_states(pool, target) == {("order", "company_id"): "waiting"}

    await run_deliver(settings, pool, target, order_waits)
    assert f"{source_id}/order/PED-1" in state.objects["deals"]
    assert state.associations == set()
    assert (await links(pool, target))[("order", "company_id")]["to_row_id"] == 501

    # The company arrives later (another partition, another batch).
    await produce(settings, [event("company", source_id, "C-1", 501, legal_name="Acme")])

    async def linked() -> bool:
        return await link_states(pool, target) == {("order", "company_id"): "associated"}

    await run_deliver(settings, pool, target, linked)
    deal = crm_id(state, "deals", source_id, "order", "PED-1")
    company = crm_id(state, "companies", source_id, "company", "C-1")
    assert state.associations == {("deals", deal, "companies", company)}
    assert state.association_writes == [("deals", deal, "companies", company)]
    row = (await links(pool, target))[("order", "company_id")]
    assert (row["from_crm_id"], row["to_crm_id"], row["last_error"]) == (deal, company, None)

    # New versions of both records, same key: the link is not sent again.
    await produce(
        settings,
        [
            event("order", source_id, "PED-1", 11, 2, code="PED-1 v2", company_id=501),
            event("company", source_id, "C-1", 501, 2, legal_name="Acme v2"),
        ],
    )

    async def updated() -> bool:
        return (
            int(
                await pool.fetchval(
                    "SELECT count(*) FROM deliveries "
                    "WHERE target_id = $1 AND version_event_id = 'e2'",
                    target.id,
                )
            )
            == 2
        )

    await run_deliver(settings, pool, target, updated)
    assert state.objects["deals"][f"{source_id}/order/PED-1"]["properties"]["dealname"] == (
        "PED-1 v2"
    )
    assert len(state.association_writes) == 1


async def test_contact_company_and_line_item_deal_links_arrive_through_5xx(
    settings: Settings, pool: asyncpg.Pool, hubspot: tuple[HubSpotState, str]
) -> None:
    state, url = hubspot
    source_id = f"a-{uuid.uuid4().hex[:8]}"
    target = linking_target(url, source_id)
    state.fail_next_associations = [503, 502]  # the first link calls fail, then pass
    await produce(
        settings,
        [
            event("company", source_id, "C-2", 502, legal_name="Beta"),
            event("contact", source_id, "K-2", 302, email="ana@beta.example", company_id=502),
            event("order", source_id, "PED-2", 12, code="PED-2", company_id=502, contact_id=302),
            event("order_item", source_id, "PED-2/1", 72, description="Bolt", order_id=12),
            event("order_item", source_id, "PED-2/2", 73, description="Nut", order_id=12),
        ],
    )
    expected = {
        ("contact", "company_id"),
        ("order", "company_id"),
        ("order", "contact_id"),
        ("order_item", "order_id"),
    }

    async def all_linked() -> bool:
        rows = await pool.fetch(
            "SELECT from_entity, column_name FROM associations "
            "WHERE target_id = $1 AND state = 'associated'",
            target.id,
        )
        return len(rows) == 5 and {(r[0], r[1]) for r in rows} == expected

    await run_deliver(settings, pool, target, all_linked)
    company = crm_id(state, "companies", source_id, "company", "C-2")
    contact = crm_id(state, "contacts", source_id, "contact", "K-2")
    deal = crm_id(state, "deals", source_id, "order", "PED-2")
    items = [crm_id(state, "line_items", source_id, "order_item", f"PED-2/{n}") for n in (1, 2)]
    assert state.associations == {
        ("contacts", contact, "companies", company),
        ("deals", deal, "companies", company),
        ("deals", deal, "contacts", contact),
        ("line_items", items[0], "deals", deal),
        ("line_items", items[1], "deals", deal),
    }
    assert state.fail_next_associations == []  # the failures were met, and retried past


async def test_refused_link_is_visible_with_its_reason_and_retried_later(
    settings: Settings, pool: asyncpg.Pool, hubspot: tuple[HubSpotState, str]
) -> None:
    state, url = hubspot
    source_id = f"a-{uuid.uuid4().hex[:8]}"
    target = linking_target(url, source_id)
    await produce(settings, [event("company", source_id, "C-3", 503, legal_name="Gamma")])

    async def company_delivered() -> bool:
        return f"{source_id}/company/C-3" in state.objects.get("companies", {})

    await run_deliver(settings, pool, target, company_delivered)
    # Someone deletes the company in HubSpot; Ponte still holds its old id.
    gone = crm_id(state, "companies", source_id, "company", "C-3")
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/crm/v3/objects/companies/batch/archive", json={"inputs": [{"id": gone}]}
        )
        assert response.status_code == 204
    await produce(
        settings, [event("contact", source_id, "K-3", 303, email="b@g.example", company_id=503)]
    )

    async def refused() -> bool:
        return await link_states(pool, target) == {("contact", "company_id"): "failed"}

    await run_deliver(settings, pool, target, refused)
    row = (await links(pool, target))[("contact", "company_id")]
    assert row["status"] == 207
    assert row["last_error"] == f"refused: No companies record with id {gone} exists"
    assert row["to_crm_id"] == gone and row["attempts"] == 1
    assert f"{source_id}/contact/K-3" in state.objects["contacts"]  # the contact itself is in
    assert state.associations == set()
    dead = await read_topic(
        settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=0, timeout_s=1
    )
    assert dead == []  # links are kept in their table, not dead-lettered

    # The company is sent again (a new version): HubSpot creates it anew, the link follows.
    await produce(settings, [event("company", source_id, "C-3", 503, 2, legal_name="Gamma 2")])

    async def relinked() -> bool:
        return await link_states(pool, target) == {("contact", "company_id"): "associated"}

    await run_deliver(settings, pool, target, relinked)
    company = crm_id(state, "companies", source_id, "company", "C-3")
    contact = crm_id(state, "contacts", source_id, "contact", "K-3")
    assert company != gone
    assert state.associations == {("contacts", contact, "companies", company)}
    assert (await links(pool, target))[("contact", "company_id")]["last_error"] is None


async def test_read_back_returns_what_hubspot_holds(
    settings: Settings, pool: asyncpg.Pool, hubspot: tuple[HubSpotState, str]
) -> None:
    state, url = hubspot
    source_id = f"a-{uuid.uuid4().hex[:8]}"
    target = linking_target(url, source_id)
    await produce(
        settings,
        [
            event("company", source_id, "C-4", 504, legal_name="Delta"),
            event("order", source_id, "PED-4", 14, code="PED-4", company_id=504),
        ],
    )

    async def linked() -> bool:
        return await link_states(pool, target) == {("order", "company_id"): "associated"}

    await run_deliver(settings, pool, target, linked)
    deal = crm_id(state, "deals", source_id, "order", "PED-4")
    company = crm_id(state, "companies", source_id, "company", "C-4")
    connectors, clients = build_connectors([target], settings)
    _, connector = connectors[target.id]
    try:
        read_deal = await connector.read_back("deals", deal)
        read_company = await connector.read_back("companies", company)
        missing = await connector.read_back("deals", "999999")
    finally:
        for client in clients:
            await client.aclose()
    assert read_deal is not None and read_company is not None
    assert read_deal["id"] == deal
    assert read_deal["properties"] == {"ponte_id": f"{source_id}/order/PED-4", "dealname": "PED-4"}
    assert (
        read_deal["properties"] == state.objects["deals"][f"{source_id}/order/PED-4"]["properties"]
    )
    assert [r["id"] for r in read_deal["associations"]["companies"]["results"]] == [company]
    assert read_company["properties"]["name"] == "Delta"
    assert [r["id"] for r in read_company["associations"]["deals"]["results"]] == [deal]
    assert missing is None


@pytest.mark.parametrize(
    ("entity", "declared", "message"),
    [
        ("order", {"code": "company"}, "objects.order.associations.code: 'code' is not a foreign"),
        ("order", {"company_id": "contact"}, "is not a foreign key to contact .contacts."),
        ("order", {"nope": "company"}, "'nope' is not a column of order"),
        ("order", {"company_id": "planet"}, "unknown entity 'planet'"),
        ("order", {"salesperson_id": "salesperson"}, "'salesperson' is not among this target"),
    ],
)
def test_associations_must_be_foreign_keys_to_delivered_entities(
    entity: str, declared: dict[str, str], message: str
) -> None:
    objects = {**OBJECTS, entity: {**OBJECTS[entity], "associations": declared}}
    entry = {"id": "hs", "kind": "hubspot", "token": "t", "objects": objects}
    with pytest.raises(ValidationError, match=message):
        parse_target(entry)
