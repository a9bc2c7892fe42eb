"""The declarative REST connector against a local stand-in of a REST CRM (real HTTP), most
tests through the real deliver consumer, broker and PostgreSQL. The target is the worked
example of docs/connectors/rest.md, read from the doc itself."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from ponte.deliver.connectors.base import Outgoing, PairsRefused
from ponte.deliver.connectors.registry import load_targets, parse_target
from ponte.deliver.connectors.rest import RestConnector, RestTarget
from ponte.deliver.keylock import KeyLocks
from ponte.deliver.ratelimit import TokenBucket
from ponte.deliver.targets import Target
from ponte.shared.config_files import expand_env
from ponte.shared.http_policy import RetryableError, TerminalError
from ponte.shared.settings import Settings
from tests.conftest import read_topic
from tests.deliver.conftest import (
    company_change,
    count_deliveries,
    delivering,
    produce,
    run_deliver,
    until,
)
from tests.stand_ins.rest_crm import RestCrmState, create_stand_in
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration

DOC = Path(__file__).parents[2] / "docs" / "connectors" / "rest.md"


def doc_entry() -> dict[str, Any]:
    """The first YAML block of the doc: the worked example, exactly as written there."""
    match = re.search(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert match, f"{DOC} has no yaml block"
    entry: dict[str, Any] = yaml.safe_load(match.group(1))["targets"][0]
    return entry


def doc_target(url: str, source_id: str, **company: Any) -> RestTarget:
    """The doc's target pointed at the stand-in and this test's source; ``company``
    overrides keys of ``objects.company`` (a rule switched off, say)."""
    entry = doc_entry()
    entry = expand_env(entry, "targets[0]")
    entry.update(id=f"rest-{source_id}", base_url=url, sources=[source_id])
    entry["objects"]["company"].update(company)
    target = parse_target(entry)
    assert isinstance(target, RestTarget)
    return target


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    state = RestCrmState()
    monkeypatch.setenv("CRM_EMAIL", state.email)
    monkeypatch.setenv("CRM_PASSWORD", state.password)


@pytest.fixture
async def crm() -> AsyncIterator[tuple[RestCrmState, str]]:
    state = RestCrmState(retry_after_s=0.5)
    async with serve(create_stand_in(state)) as url:
        yield state, url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"deliver_max_attempts": 4, "deliver_max_age_s": 20.0})


def change(
    source_id: str, key: str, minute: int, operation: str = "upsert", **row: Any
) -> dict[str, Any]:
    """A company change with the doc example's extra column (``city``) null unless given."""
    return company_change(source_id, key, minute, operation=operation, **{"city": None, **row})


async def crm_ids(pool: asyncpg.Pool, target: Target) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT source_key, crm_id FROM deliveries WHERE target_id = $1", target.id
    )
    return {row["source_key"]: row["crm_id"] for row in rows}


async def updated_at(pool: asyncpg.Pool, target: Target, source_key: str) -> Any:
    return await pool.fetchval(
        "SELECT updated_at FROM deliveries WHERE target_id = $1 AND source_key = $2",
        target.id,
        source_key,
    )


def cnpj(n: int) -> str:
    return f"{11222333000100 + n:014d}"


def organisations(state: RestCrmState) -> list[dict[str, Any]]:
    return list(state.records.get("organizations", {}).values())


# --- through the consumer -----------------------------------------------------------------


async def test_doc_example_delivers_one_record_per_key(
    settings: Settings, pool: asyncpg.Pool, crm: tuple[RestCrmState, str]
) -> None:
    state, url = crm
    source_id = f"r-{uuid.uuid4().hex[:8]}"
    target = doc_target(url, source_id)
    state.rate_limit_next = 2  # two 429s with Retry-After on the way
    # An organisation typed into the CRM by hand: found by its CNPJ, updated, not doubled.
    state.records["organizations"] = {
        "4001": {"id": 4001, "name": "Acme (manual)", "custom_fields": {"cnpj": cnpj(0)}}
    }
    changes = [
        change(source_id, f"C{n}", minute, legal_name=f"Org {n} v{minute}", document=cnpj(n))
        for n in range(20)
        for minute in (1, 2)
    ]
    # Two ERP records with the same CNPJ: one organisation in the CRM (natural key lock).
    changes += [
        change(source_id, "TWIN-A", 3, legal_name="Twin", document=cnpj(99), city="Recife"),
        change(source_id, "TWIN-B", 3, legal_name="Twin", document=cnpj(99), city="Recife"),
    ]
    await produce(settings, changes)

    async def done() -> bool:
        return await count_deliveries(pool, target) == 22

    async with delivering(settings, pool, target) as task:
        await until(task, done)
        await check_one_organisation_per_cnpj(state, pool, target)

        # A delete in the source deletes by the stored CRM id.
        deleted = (await crm_ids(pool, target))["C5"]
        await produce(settings, [change(source_id, "C5", 4, operation="delete")])

        async def gone() -> bool:
            return deleted not in state.records["organizations"]

        await until(task, gone)
    assert ("delete", "organizations", deleted, {}) in state.writes


async def check_one_organisation_per_cnpj(
    state: RestCrmState, pool: asyncpg.Pool, target: Target
) -> None:
    orgs = organisations(state)
    by_cnpj: dict[str, list[dict[str, Any]]] = {}
    for org in orgs:
        by_cnpj.setdefault(org["custom_fields"]["cnpj"], []).append(org)
    assert len(orgs) == 21 and all(len(found) == 1 for found in by_cnpj.values())
    for n in range(20):
        org = by_cnpj[cnpj(n)][0]
        assert org["name"] == f"Org {n} v2"
        assert org["owner_id"] == 7 and org["visible_to"] == "3"  # the constants
    assert by_cnpj[cnpj(0)][0]["id"] == 4001  # the hand-typed one, updated
    assert by_cnpj[cnpj(99)][0]["address"] == {"city": "Recife"}  # dotted path -> nested
    ids = await crm_ids(pool, target)
    assert ids["C0"] == "4001"
    assert ids["TWIN-A"] == ids["TWIN-B"] == str(by_cnpj[cnpj(99)][0]["id"])
    assert {ids[f"C{n}"] for n in range(20)} == {str(by_cnpj[cnpj(n)][0]["id"]) for n in range(20)}
    assert state.rate_limited == 2 and state.logins >= 1


@pytest.mark.parametrize("rule", [True, False])
async def test_create_answering_500_after_saving(
    settings: Settings, pool: asyncpg.Pool, crm: tuple[RestCrmState, str], rule: bool
) -> None:
    state, url = crm
    source_id = f"r-{uuid.uuid4().hex[:8]}"
    target = doc_target(
        url, source_id, search_before_create=False, create_error_may_have_saved=rule
    )
    state.saved_then_fail = 1
    await produce(settings, [change(source_id, "C1", 1, legal_name="Acme", document=cnpj(1))])

    async def done() -> bool:
        return await count_deliveries(pool, target) == 1

    await run_deliver(settings, pool, target, done)
    orgs = organisations(state)
    if rule:  # searched by the CNPJ before creating again: the saved one was updated
        assert len(orgs) == 1
        assert (await crm_ids(pool, target))["C1"] == str(orgs[0]["id"])
        assert [w[0] for w in state.writes] == ["create", "update"]
    else:  # the retried create made the duplicate this rule exists for
        assert len(orgs) == 2
        assert [w[0] for w in state.writes] == ["create", "create"]


@pytest.mark.parametrize("rule", [True, False])
async def test_create_answering_without_an_id(
    settings: Settings, pool: asyncpg.Pool, crm: tuple[RestCrmState, str], rule: bool
) -> None:
    state, url = crm
    source_id = f"r-{uuid.uuid4().hex[:8]}"
    target = doc_target(url, source_id, search_before_create=False, create_returns_no_id=rule)
    state.create_returns_no_id = True
    await produce(settings, [change(source_id, "C1", 1, legal_name="Acme v1", document=cnpj(1))])

    async def first() -> bool:
        return (
            await count_deliveries(pool, target) + await count_deliveries(pool, target, "failed")
            == 1
        )

    async with delivering(settings, pool, target) as task:
        await until(task, first)
        first_updated = await updated_at(pool, target, "C1")
        await produce(
            settings, [change(source_id, "C1", 2, legal_name="Acme v2", document=cnpj(1))]
        )

        async def second() -> bool:
            return len(state.writes) == 2 and await updated_at(pool, target, "C1") > first_updated

        await until(task, second)
    orgs = organisations(state)
    if rule:  # the id was learned by searching, so version 2 updated the same record
        assert len(orgs) == 1 and orgs[0]["name"] == "Acme v2"
        assert (await crm_ids(pool, target))["C1"] == str(orgs[0]["id"])
        assert [w[0] for w in state.writes] == ["create", "update"]
    else:  # no id: version 1 dead-lettered, version 2 created the record again
        assert len(orgs) == 2
        dead = await read_topic(
            settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=2
        )
        assert len(dead) == 2
        assert all("without an id" in dict(d.headers)["ponte-dlq-reason"].decode() for d in dead)


async def test_refused_record_dead_letters_with_the_crm_answer(
    settings: Settings, pool: asyncpg.Pool, crm: tuple[RestCrmState, str]
) -> None:
    state, url = crm
    source_id = f"r-{uuid.uuid4().hex[:8]}"
    target = doc_target(url, source_id)
    state.refuse_values = {"00000000000000"}
    await produce(
        settings,
        [
            change(source_id, "OK", 1, legal_name="Fine", document=cnpj(1)),
            change(source_id, "BAD", 1, legal_name="Bad", document="00000000000000"),
        ],
    )

    async def done() -> bool:
        return (
            await count_deliveries(pool, target) == 1
            and await count_deliveries(pool, target, "failed") == 1
        )

    await run_deliver(settings, pool, target, done)
    dead = await read_topic(settings.kafka_bootstrap, settings.deliver_dead_letter_topic, expect=1)
    assert len(dead) == 1 and dead[0].key == f"{source_id}/company/BAD".encode()
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert "refused with 400" in headers["ponte-dlq-reason"]
    assert "invalid value '00000000000000'" in headers["ponte-dlq-reason"]
    assert headers["ponte-dlq-attempts"] == "1"
    assert len(organisations(state)) == 1


# --- the connector alone, over real HTTP --------------------------------------------------


@pytest.fixture
async def connector(crm: tuple[RestCrmState, str]) -> AsyncIterator[RestConnector]:
    _, url = crm
    target = doc_target(url, "direct")
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        yield RestConnector.for_target(target, client, TokenBucket(1000, 1.0))


def outgoing(n: int, name: str, crm_id: str | None = None) -> Outgoing:
    return Outgoing(
        f"erp/company/C{n}", {"name": name, "custom_fields.cnpj": cnpj(n)}, crm_id=crm_id
    )


async def test_token_is_renewed_before_expiry_and_once_on_401(
    crm: tuple[RestCrmState, str], connector: RestConnector
) -> None:
    state, _ = crm
    state.token_ttl_s = 60.6  # the doc's refresh margin is 60 s: stale after 0.6 s
    await connector.upsert_batch("organizations", [outgoing(1, "v1")])
    await connector.upsert_batch("organizations", [outgoing(1, "v2")])
    assert state.logins == 1  # reused while fresh
    await asyncio.sleep(0.7)  # the scenario: the token goes stale (not a wait for Ponte)
    await connector.upsert_batch("organizations", [outgoing(1, "v3")])
    assert state.logins == 2 and state.unauthorized == 0  # renewed before it lapsed

    state.token_ttl_s = 3600
    state.revoke_tokens()  # the CRM drops the token early: 401, one login, one repeat
    outcome = await connector.upsert_batch(
        "organizations", [outgoing(n, "v4") for n in range(1, 5)]
    )
    assert len(outcome.delivered) == 4 and not outcome.failed
    assert state.logins == 3 and state.unauthorized >= 1
    assert len(organisations(state)) == 4


async def test_wrong_credentials_are_terminal(
    crm: tuple[RestCrmState, str], connector: RestConnector
) -> None:
    state, _ = crm
    state.password = "changed"
    outcome = await connector.upsert_batch("organizations", [outgoing(1, "v1")])
    assert "refused with 401 on login" in outcome.failed["erp/company/C1"]


async def test_known_crm_id_updates_and_falls_back_when_deleted_in_the_crm(
    crm: tuple[RestCrmState, str], connector: RestConnector
) -> None:
    state, _ = crm
    first = await connector.upsert_batch("organizations", [outgoing(1, "v1")])
    crm_id = first.delivered["erp/company/C1"]
    calls = len(state.calls)
    await connector.upsert_batch("organizations", [outgoing(1, "v2", crm_id)])
    assert state.calls[calls:] == [("PUT", f"/v1/organizations/{crm_id}")]  # no search

    state.records["organizations"].clear()  # deleted by hand in the CRM
    again = await connector.upsert_batch("organizations", [outgoing(1, "v3", crm_id)])
    new_id = again.delivered["erp/company/C1"]
    assert new_id != crm_id and organisations(state)[0]["name"] == "v3"
    assert await connector.read_back("organizations", new_id) == organisations(state)[0]
    assert await connector.read_back("organizations", crm_id) is None
    await connector.delete_batch("organizations", [new_id, crm_id])  # 404 counts as done
    assert organisations(state) == []


@pytest.mark.parametrize("serialised", [True, False])
async def test_two_records_with_one_natural_key_make_one_organisation(
    crm: tuple[RestCrmState, str], connector: RestConnector, serialised: bool
) -> None:
    state, _ = crm
    state.search_delay_s = 0.3  # both searches in flight before either create
    if not serialised:  # what the per-key lock prevents: each record its own locks
        unshared = lambda keys: KeyLocks("unshared").hold(keys)  # noqa: E731
        connector._locks.hold = unshared  # type: ignore[method-assign]
    twins = [
        Outgoing(f"{source}/company/C1", {"name": "Twin", "custom_fields.cnpj": cnpj(1)})
        for source in ("erp-a", "erp-b")
    ]
    outcome = await connector.upsert_batch("organizations", twins)
    assert len(outcome.delivered) == 2
    if serialised:
        assert len(organisations(state)) == 1
        assert len(set(outcome.delivered.values())) == 1
    else:
        assert len(organisations(state)) == 2


async def test_associate_by_a_call_template_reports_refused_pairs(
    crm: tuple[RestCrmState, str],
) -> None:
    state, url = crm
    entry = expand_env(doc_entry(), "targets[0]")
    entry.update(base_url=url)
    entry["objects"]["contact"] = {
        "object_type": "persons",
        "properties": {"name": "name"},
        "create": {"method": "POST", "path": "/v1/persons"},
        "id_path": "data.id",
        "update": {"method": "PUT", "path": "/v1/persons/{crm_id}"},
        "associate": {
            "organizations": {
                "method": "PUT",
                "path": "/v1/persons/{from_id}",
                "body": {"org_id": "{to_id}"},
            }
        },
    }
    target = parse_target(entry)
    assert isinstance(target, RestTarget)
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        connector = RestConnector.for_target(target, client, TokenBucket(1000, 1.0))
        person = await connector.upsert_batch("persons", [Outgoing("erp/contact/P1", {})])
        person_id = person.delivered["erp/contact/P1"]
        with pytest.raises(PairsRefused) as error:
            await connector.associate(
                "persons", "organizations", [(person_id, "4001"), ("999", "4001")]
            )
    assert list(error.value.refused) == [("999", "4001")]
    assert "404" in error.value.refused[("999", "4001")]
    assert state.records["persons"][person_id]["org_id"] == "4001"


async def test_rate_limit_and_unconfigured_calls(
    crm: tuple[RestCrmState, str], connector: RestConnector
) -> None:
    state, _ = crm
    state.rate_limit_next = 1
    state.retry_after_s = 0.2
    with pytest.raises(RetryableError) as error:
        await connector.upsert_batch("organizations", [outgoing(1, "v1")])
    assert error.value.status == 429 and error.value.retry_after == 0.2
    with pytest.raises(TerminalError, match="associations from organizations to persons"):
        await connector.associate("organizations", "persons", [("1", "2")])
    with pytest.raises(TerminalError, match="not configured"):
        await connector.upsert_batch("deals", [outgoing(1, "v1")])


# --- configuration errors name the field ---------------------------------------------------


@pytest.mark.parametrize(
    ("change_to", "message"),
    [
        ({"natural_key": "email"}, "natural_key: 'email' must be one of the mapped"),
        ({"search": None}, "natural_key: set search too"),
        ({"update": {"method": "PUT", "path": "/v1/organizations"}}, "has no {crm_id}"),
        ({"search": {"path": "/v1/organizations/search"}}, "{key} appears in neither"),
        ({"natural_key": None, "search": None}, "create_error_may_have_saved: needs"),
        ({"id_path": "data..id"}, "id_path"),
        ({"create_error_statuses": [200]}, "200 is not an HTTP error status"),
    ],
)
def test_bad_config_is_refused_naming_the_field(
    tmp_path: Path, change_to: dict[str, Any], message: str
) -> None:
    entry = doc_entry()
    entry["objects"]["company"].update(change_to)
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": [entry]}), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_targets(path)
    assert "targets[0] (crm-pipe)" in str(error.value)
    assert "objects.company" in str(error.value)


def test_config_errors_never_echo_credentials(tmp_path: Path) -> None:
    entry = doc_entry()
    entry["auth"]["tokn"] = "data.token"  # a typo beside the password
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": [entry]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"auth\.login\.tokn") as error:
        load_targets(path)
    assert RestCrmState().password not in str(error.value)


def test_doc_example_loads_as_a_targets_file(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": [doc_entry()]}), encoding="utf-8")
    (target,) = load_targets(path)
    assert isinstance(target, RestTarget)
    assert target.auth is not None and "s3cret" not in repr(target)
