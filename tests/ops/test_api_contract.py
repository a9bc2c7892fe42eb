"""What schemathesis found in the ops API (tests/test_openapi.py), each pinned here with the
request it sent, against the real app over HTTP, PostgreSQL and broker: the answer, and
that the OpenAPI document says it, since the document is what a client builds on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from ponte.ops.edits import CIDR_PATTERN
from ponte.ops.routes.history import MAX_REQUEST_ID
from ponte.shared.settings import Settings
from tests.conftest import RunningIngest, read_topic
from tests.ops.conftest import OPS_TOKEN, RunningOps, serve_ops
from tests.ops.test_onboarding_and_replay import dead_letter

pytestmark = pytest.mark.integration

NOT_UTF8 = b'4yCy\xff\t\xfe"\xa0'
"""The body schemathesis sent: bytes that are not UTF-8, with ``application/json``."""


async def openapi(ops: RunningOps) -> dict[str, Any]:
    async with ops.client(token=None) as client:
        document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


def schema_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def non_null(property_schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an ``X | None`` property."""
    (branch,) = [item for item in property_schema["anyOf"] if item.get("type") != "null"]
    return dict(branch)


# --- 1. a request id past bigint ------------------------------------------------------------


async def test_a_request_id_past_bigint_is_a_422_not_a_500(ops: RunningOps) -> None:
    async with ops.client() as client:
        past = await client.get("/ops/history/3048878750111539134464/log")
        largest = await client.get(f"/ops/history/{MAX_REQUEST_ID}/log")
        zero = await client.get("/ops/history/0/log")
    assert past.status_code == 422, past.text
    assert past.json()["problems"][0]["field"] == "path.request_id"
    assert largest.status_code == 404  # the largest bigint is a valid id, just not stored
    assert zero.status_code == 422
    (parameter,) = (await openapi(ops))["paths"]["/ops/history/{request_id}/log"]["get"][
        "parameters"
    ]
    assert parameter["schema"]["minimum"] == 1
    assert parameter["schema"]["maximum"] == 2**63 - 1


# --- 2. dry_run strict ----------------------------------------------------------------------


@pytest.mark.parametrize("not_false", [0, 0.0, "false", "no", "off", "", None, []])
async def test_only_json_false_replays(
    ops: RunningOps, settings: Settings, source_id: str, not_false: object
) -> None:
    """``{"dry_run": 0}`` once replayed for real (pydantic's lax bool read 0 as false).
    A dead letter waits in the topic; none of these values may send it."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.deliver_dead_letter_topic,
            **dead_letter(source_id, "E1", datetime.now(UTC) - timedelta(minutes=1), "crm-a"),
        )
    finally:
        await producer.stop()
    async with ops.client() as client:
        answer = await client.post(
            "/ops/replay", json={"source_id": source_id, "dry_run": not_false}
        )
        audit = (await client.get("/ops/audit", params={"source_id": source_id})).json()
    assert answer.status_code == 422, answer.text
    assert answer.json()["problems"][0]["field"] == "body.dry_run"
    assert (
        await read_topic(settings.kafka_bootstrap, settings.changes_topic, expect=0, timeout_s=1)
        == []
    )
    assert audit["items"] == []


async def test_the_document_says_dry_run_is_a_boolean(ops: RunningOps) -> None:
    dry_run = schema_of(await openapi(ops), "ReplayRequest")["properties"]["dry_run"]
    assert dry_run["type"] == "boolean" and dry_run["default"] is True


# --- 3. a body that is not JSON -------------------------------------------------------------


@pytest.mark.parametrize("body", [NOT_UTF8, b"{not json", b"[1, 2"])
async def test_a_body_that_is_not_json_is_a_422_on_every_route_with_a_body(
    ops: RunningOps, ingest: RunningIngest, source_id: str, body: bytes
) -> None:
    """Invalid UTF-8 was a 400 (FastAPI's "error parsing the body"), undocumented, while
    every other broken JSON was a 422: now both are the documented 422."""
    headers = {"content-type": "application/json"}
    async with ops.client() as client:
        answers = [
            await client.post("/ops/replay", content=body, headers=headers),
            await client.patch(f"/ops/sources/{source_id}", content=body, headers=headers),
        ]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["problems"]
        assert error["field"].split(".")[0] == "body" and error["type"] == "json_invalid"


# --- 4. the export's 7-day limit ------------------------------------------------------------


async def test_the_period_limit_is_documented_as_it_is_answered(ops: RunningOps) -> None:
    async with ops.client() as client:
        answer = await client.get("/ops/history/export", params={"since": "2000-01-01T00:00:00Z"})
    assert answer.status_code == 422
    (error,) = answer.json()["problems"]
    assert error["field"] == "query.until" and "at most 7 days" in error["message"]

    document = await openapi(ops)
    documented = document["paths"]["/ops/history/export"]["get"]["responses"]["422"]
    assert "7" in documented["description"]
    content = documented["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/Problem"}
    (example,) = content["example"]["problems"]
    assert example["field"] == error["field"] and example["type"] == error["type"]
    assert example["message"].split(";")[0] == error["message"].split(";")[0]


# --- dates and times: ISO 8601 text only -----------------------------------------------------


@pytest.mark.parametrize("not_a_date", ["0.5", "0", "1731596400", "yesterday"])
async def test_a_number_is_not_a_date(ops: RunningOps, not_a_date: str) -> None:
    """``?until=0.5`` was an export up to 1970-01-01T00:00:00.5Z and ``{"until": 0}`` a
    replay selection: pydantic's lax datetime reads numbers as Unix seconds, though the
    document says ``format: date-time``."""
    async with ops.client() as client:
        export = await client.get("/ops/history/export", params={"until": not_a_date})
        replay = await client.post("/ops/replay", json={"until": not_a_date})
        replay_number = await client.post("/ops/replay", json={"since": 0})
    assert export.status_code == 422 and export.json()["problems"][0]["field"] == "query.until"
    assert replay.status_code == 422 and replay.json()["problems"][0]["field"] == "body.until"
    assert replay_number.json()["problems"][0]["field"] == "body.since"
    assert "ISO 8601" in export.json()["problems"][0]["message"]


async def test_the_first_day_of_the_calendar_is_a_422_not_a_500(ops: RunningOps) -> None:
    """The default start is a day before ``until``; before year 1 there is none."""
    async with ops.client() as client:
        answer = await client.get("/ops/history/export", params={"until": "0001-01-01T00:00:00Z"})
    assert answer.status_code == 422 and answer.json()["problems"][0]["field"] == "query.until"


async def test_a_control_character_in_a_table_filter_is_a_422(ops: RunningOps) -> None:
    """A NUL once reached PostgreSQL after the 200 had gone out: the download broke off."""
    async with ops.client() as client:
        answer = await client.get("/ops/history/export", params={"tables": "Pedido\x00"})
    assert answer.status_code == 422
    assert answer.json()["problems"][0]["field"].split(".")[:2] == ["query", "tables"]


# --- a one-value query parameter sent twice ---------------------------------------------------


async def test_a_one_value_parameter_sent_twice_is_a_422(ops: RunningOps) -> None:
    """``?source_id=false&source_id=false`` was read as its last value, silently; the
    document says one value. ``tables`` takes several and still may repeat."""
    async with ops.client() as client:
        twice = await client.get(
            "/ops/history/export", params=[("source_id", "a"), ("source_id", "b")]
        )
        audit = await client.get("/ops/audit", params=[("limit", "1"), ("limit", "2")])
        tables = await client.get(
            "/ops/history/export",
            params=[("tables", "Pedido"), ("tables", "Empresa"), ("format", "csv")],
        )
    assert twice.status_code == 422
    assert twice.json()["problems"] == [
        {
            "field": "query.source_id",
            "message": "give one value, not several",
            "type": "value_error",
        }
    ]
    assert twice.json()["error"] == "invalid_request"
    assert twice.json()["field"] == "query.source_id"
    assert audit.status_code == 422 and audit.json()["problems"][0]["field"] == "query.limit"
    assert tables.status_code == 200


# --- 5. the secret's minimum length ---------------------------------------------------------


async def test_the_secret_and_table_rules_are_in_the_schema(ops: RunningOps) -> None:
    add_secret = schema_of(await openapi(ops), "SourcePatch")["properties"]["add_secret"]
    secret = non_null(add_secret)
    assert secret["type"] == "string" and secret["minLength"] == 16
    assert secret["pattern"] == r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
    assert add_secret["writeOnly"] is True
    cidrs = non_null(schema_of(await openapi(ops), "SourcePatch")["properties"]["allowed_cidrs"])
    assert cidrs["items"]["pattern"] == CIDR_PATTERN
    table = non_null(schema_of(await openapi(ops), "SourcePatch")["properties"]["tables"])
    assert table["items"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
    }


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"add_secret": "x" * 15}, "add_secret"),  # schemathesis' 15 characters
        ({"add_secret": " " + "x" * 16}, "add_secret"),  # whitespace at an end
        ({"add_secret": " " * 20}, "add_secret"),
        ({"active": 0}, "active"),  # booleans are strict here too
        ({"retire_old_secrets": "yes"}, "retire_old_secrets"),
        ({"tables": [""]}, "tables"),  # schemathesis' empty table name, now in the schema
        ({"allowed_cidrs": [""]}, "allowed_cidrs"),  # and its empty network
    ],
)
async def test_a_patch_outside_the_schema_is_refused_naming_the_field(
    ops: RunningOps, ingest: RunningIngest, source_id: str, patch: dict[str, object], field: str
) -> None:
    async with ops.client() as client:
        answer = await client.patch(f"/ops/sources/{source_id}", json=patch)
        source = (await client.get(f"/ops/sources/{source_id}")).json()
    assert answer.status_code == 422, answer.text
    assert answer.json()["problems"][0]["field"].split(".")[:2] == ["body", field]
    assert "x" * 15 not in answer.text  # a rejected secret is not echoed
    assert source["active"] is True and len(source["secret_fingerprints"]) == 1


async def test_a_secret_the_schema_allows_is_taken(
    ops: RunningOps, ingest: RunningIngest, source_id: str
) -> None:
    async with ops.client() as client:
        answer = await client.patch(
            f"/ops/sources/{source_id}", json={"add_secret": "sixteen chars ok"}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["changed"] == ["secrets"]


# --- 6. Allow ---------------------------------------------------------------------------------


def _example_path(template: str) -> str:
    return template.replace("{source_id}", "0").replace("{request_id}", "1")


async def test_allow_lists_every_documented_method_of_the_path(ops: RunningOps) -> None:
    """``OPTIONS /ops/sources/0`` said ``Allow: GET``, though PATCH is served there too
    (two routes share the path). Every documented path, with and without the token: the
    405 comes from routing, before authentication."""
    document = await openapi(ops)
    async with ops.client() as client, ops.client(token=None) as anonymous:
        for template, item in document["paths"].items():
            documented = {method.upper() for method in item}
            for caller in (client, anonymous):
                answer = await caller.options(_example_path(template))
                assert answer.status_code == 405, template
                allowed = {method.strip() for method in answer.headers["allow"].split(",")}
                assert allowed == documented, template
        put = await client.put("/ops/sources/0", json={})
    assert put.status_code == 405 and put.headers["allow"] == "GET, PATCH"


# --- 7. the session cookie behind the TLS ingress ------------------------------------------


def _set_cookie(response: httpx.Response) -> list[str]:
    """The attributes of the session's Set-Cookie, lower-cased (name=value first)."""
    (header,) = [
        value
        for value in response.headers.get_list("set-cookie")
        if value.startswith("ponte_ops_session=")
    ]
    return [part.strip().lower() for part in header.split(";")]


async def test_the_session_cookie_is_secure_over_https_or_when_configured(
    ops: RunningOps, settings: Settings
) -> None:
    """Unset, PONTE_OPS_COOKIE_SECURE marks the cookie Secure only when the request came
    over HTTPS, so `make dev`'s plain-HTTP page works in any client. Behind the TLS
    ingress the app sees plain HTTP and X-Forwarded-Proto is not believed, so production
    sets it true (deploy/k8s): Secure whatever the scheme. A header cannot switch it."""
    async with httpx.AsyncClient(base_url=ops.url, follow_redirects=False) as client:
        login = await client.post("/login", data={"token": OPS_TOKEN})
        forwarded = await client.post(
            "/login", data={"token": OPS_TOKEN}, headers={"X-Forwarded-Proto": "https"}
        )
        # The jar sends a cookie without Secure over HTTP: the session works.
        assert (await client.get("/")).status_code == 200
    attributes = _set_cookie(login)
    assert "secure" not in attributes and {"httponly", "samesite=strict"} <= set(attributes)
    assert "secure" not in _set_cookie(forwarded)

    behind_tls = settings.model_copy(
        update={"ops_token": SecretStr(OPS_TOKEN), "ops_cookie_secure": True}
    )
    async for running in serve_ops(behind_tls):
        async with httpx.AsyncClient(base_url=running.url, follow_redirects=False) as client:
            login = await client.post("/login", data={"token": OPS_TOKEN})
            logout = await client.post("/logout")
        assert {"secure", "httponly", "samesite=strict"} <= set(_set_cookie(login))
        assert "secure" in _set_cookie(logout)  # deleted with the attributes it was set with


async def test_the_page_takes_the_api_token_too(ops: RunningOps) -> None:
    async with httpx.AsyncClient(base_url=ops.url, follow_redirects=False) as client:
        with_token = await client.get("/", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
        wrong = await client.get("/", headers={"Authorization": "Bearer not-the-token"})
    assert with_token.status_code == 200 and "<table" in with_token.text
    assert wrong.status_code == 303 and wrong.headers["location"] == "/login"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tables", ["Pedido", "d\u00be]\u0000x"]),
        ("business_rule", "regra\u0000"),
        ("add_secret", "a-new-secret-value\u0000-0001"),
    ],
)
async def test_nul_in_text_is_a_422_naming_the_field_not_a_500(
    ops: RunningOps, ingest: RunningIngest, source_id: str, field: str, value: Any
) -> None:
    """PostgreSQL text cannot hold NUL: schemathesis found a 500 in tables (seed 3)."""
    async with ops.client() as client:
        response = await client.patch(f"/ops/sources/{source_id}", json={field: value})
    assert response.status_code == 422, response.text
    assert field in {
        part for item in response.json()["problems"] for part in item["field"].split(".")
    }
