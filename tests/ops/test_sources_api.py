"""``/ops/sources`` and ``/ops/audit`` against a real ingest, PostgreSQL and broker: the
token, seed 001's "Informações Gerais" from real request history, edits that ingest then
applies, validation naming the field, and the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from ponte.ops.fingerprints import fingerprint
from tests.conftest import RunningIngest
from tests.eventually import eventually
from tests.ops.conftest import (
    SECRET,
    RunningOps,
    envelope,
    send_webhook,
    wait_for_history,
)

pytestmark = pytest.mark.integration


async def test_the_api_needs_the_token_and_the_probes_do_not(ops: RunningOps) -> None:
    async with ops.client(token=None) as anonymous:
        missing = await anonymous.get("/ops/sources")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert "Bearer" in missing.json()["message"]
        assert missing.headers["www-authenticate"] == "Bearer"
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).json()["ready"] is True
        assert (await anonymous.get("/metrics")).status_code == 200
        # A mutation with a page cookie that is not a session is refused too.
        assert (await anonymous.patch("/ops/sources/x", json={})).status_code == 401
    async with ops.client(token="ops-test-token-wrong-" + "y" * 20) as wrong:
        assert (await wrong.get("/ops/sources")).status_code == 401
    async with ops.client() as client:
        assert (await client.get("/ops/sources")).status_code == 200


def test_the_service_refuses_to_start_without_a_real_token(ops: RunningOps) -> None:
    from pydantic import SecretStr

    from ponte.ops.app import create_app

    for token in (None, "CHANGE_ME", "short"):
        settings = ops.settings.model_copy(
            update={"ops_token": SecretStr(token) if token else None}
        )
        with pytest.raises(ValueError, match="PONTE_OPS_TOKEN"):
            create_app(settings)


async def test_general_information_comes_from_the_request_history(
    ops: RunningOps, ingest: RunningIngest, pool: asyncpg.Pool, source_id: str
) -> None:
    before = datetime.now(UTC)
    assert (await send_webhook(ingest, source_id, envelope("Pedido", rows=3))).status_code == 202
    assert (await send_webhook(ingest, source_id, envelope("Empresa"))).status_code == 202
    bad = await send_webhook(ingest, source_id, envelope("Pedido"), secret="not-the-secret-at-all")
    assert bad.status_code == 401
    await wait_for_history(pool, source_id, 3)
    await pool.execute(
        "INSERT INTO salespeople (source_id, source_table, source_key, extra) "
        "VALUES ($1, 'Vendedor', 'V07', '{}'), ($1, 'Vendedor', 'V08', '{}')",
        source_id,
    )

    async with ops.client() as client:
        answer = await client.get(f"/ops/sources/{source_id}")
        listed = await client.get("/ops/sources")
        missing = await client.get("/ops/sources/no-such-source")
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["integration_type"] == "erp"
    assert (info["erp_name"], info["erp_version"]) == ("Sankhya", "4.2")
    assert info["active"] is True and info["deployment_status"] == "in_progress"
    assert info["scheduled"] is False and info["next_scheduled_run"] is None
    assert "webhook source" in info["scheduled_note"]  # no pull in PONTE_PULLS_FILE
    runs = info["recent_runs"]
    assert [run["status"] for run in runs] == ["error", "success", "success"]  # newest first
    assert runs[0]["reason"] == "bad_signature" and runs[0]["status_code"] == 401
    assert runs[1]["tables"] == ["Empresa"] and runs[2]["tables"] == ["Pedido"]
    assert all(run["log_url"] == f"/ops/history/{run['request_id']}/log" for run in runs)
    assert info["average_duration_ms"] > 0
    assert datetime.fromisoformat(info["last_success_at"]) >= before
    assert datetime.fromisoformat(info["last_success_at"]) < datetime.fromisoformat(
        info["last_request_at"]
    )  # the failed request came last
    assert info["silent_too_long"] is False
    assert info["max_silence_hours"] == 24.0 and info["business_rule"] == ""
    size = info["data_size"]
    assert size["crm_rows"] == {"salespeople": 2} and size["crm_rows_total"] == 2
    assert size["history_requests"] == 3 and size["history_bytes"] > 300
    assert info["secret_fingerprints"] == [fingerprint(SECRET)]
    assert SECRET not in answer.text
    assert source_id in [item["id"] for item in listed.json()["items"]]
    assert missing.status_code == 404

    async with ops.client() as client:
        log = await client.get(runs[2]["log_url"])
    assert log.status_code == 200
    assert "attachment" in log.headers["content-disposition"]
    assert log.json()["response_body"]["records"] == 3
    assert '"Pedido"' in log.json()["request_body"]


async def test_a_source_never_successful_is_silent_too_long_once_its_limit_has_passed(
    ops: RunningOps, ingest: RunningIngest, source_id: str, pool: asyncpg.Pool
) -> None:
    async with ops.client() as client:
        new = (await client.get(f"/ops/sources/{source_id}")).json()
        # Created a moment ago: not yet silent for its 24 h, only "never yet".
        assert new["last_success_at"] is None and new["never_succeeded"] is True
        assert new["silent_too_long"] is False
        await pool.execute(
            "UPDATE sources SET created_at = now() - interval '25 hours' WHERE id = $1", source_id
        )
        old = (await client.get(f"/ops/sources/{source_id}")).json()
    assert old["never_succeeded"] is True and old["silent_too_long"] is True


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"allowed_cidrs": ["10.0.0.0/8", "10.0.0.999/8"]}, "allowed_cidrs"),
        ({"add_secret": "too-short"}, "add_secret"),
        ({"max_silence_hours": 0}, "max_silence_hours"),
        ({"deployment_status": "done"}, "deployment_status"),
        ({"tables": ["Pedido", "  "]}, "tables"),
        ({"active": "maybe"}, "active"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_edits_name_the_field(
    ops: RunningOps, ingest: RunningIngest, source_id: str, patch: dict[str, object], field: str
) -> None:
    async with ops.client() as client:
        answer = await client.patch(f"/ops/sources/{source_id}", json=patch)
        audit = await client.get("/ops/audit", params={"source_id": source_id})
    assert answer.status_code == 422
    assert any(
        error["field"].split(".")[:2] == ["body", field] for error in answer.json()["problems"]
    )
    assert "too-short" not in answer.text  # a rejected secret is not echoed either
    assert audit.json()["items"] == []


async def _answers_after_refresh(
    ingest: RunningIngest, source_id: str, secret: str, expected: int
) -> None:
    """Send webhooks until ingest answers ``expected`` (its sources refresh every 0.5 s
    in tests); fail after 5 s with the last status."""

    async def status() -> int:
        return (await send_webhook(ingest, source_id, envelope(), secret=secret)).status_code

    await eventually(
        status,
        satisfied=lambda answered: answered == expected,
        timeout_s=5,
        interval_s=0.2,  # each poll is a webhook: a few, not dozens
        message=f"ingest to answer {expected} once its sources refreshed",
    )


async def test_edits_take_effect_on_ingest_and_are_audited(
    ops: RunningOps, ingest: RunningIngest, source_id: str, pool: asyncpg.Pool
) -> None:
    new_secret = "rotated-secret-for-ops-0002"
    actor = {"X-Ponte-Actor": "maria@example.com"}
    async with ops.client(**actor) as client:
        off = await client.patch(f"/ops/sources/{source_id}", json={"active": False})
        assert off.status_code == 200 and off.json()["changed"] == ["active"]
        await _answers_after_refresh(ingest, source_id, SECRET, 404)

        on = await client.patch(
            f"/ops/sources/{source_id}",
            json={
                "active": True,
                "add_secret": new_secret,
                "business_rule": "Importa empresas e pedidos; curva ABC no CRM.",
                "max_silence_hours": 6,
                "deployment_status": "completed",
                "tables": ["Pedido"],
            },
        )
        assert on.status_code == 200, on.text
        assert sorted(on.json()["changed"]) == sorted(
            [
                "active",
                "secrets",
                "business_rule",
                "max_silence_hours",
                "deployment_status",
                "tables",
            ]
        )
        assert new_secret not in on.text
        assert on.json()["source"]["secret_fingerprints"] == [
            fingerprint(new_secret),
            fingerprint(SECRET),
        ]
        # Both secrets are valid during the rotation.
        await _answers_after_refresh(ingest, source_id, new_secret, 202)
        assert (await send_webhook(ingest, source_id, envelope())).status_code == 202
        # The table filter applies.
        other = await send_webhook(ingest, source_id, envelope("Empresa"), secret=new_secret)
        assert other.status_code != 202

        retired = await client.patch(f"/ops/sources/{source_id}", json={"retire_old_secrets": True})
        assert retired.json()["source"]["secret_fingerprints"] == [fingerprint(new_secret)]
        await _answers_after_refresh(ingest, source_id, SECRET, 401)

        locked = await client.patch(
            f"/ops/sources/{source_id}", json={"allowed_cidrs": ["203.0.113.0/24"]}
        )
        assert locked.json()["source"]["allowed_cidrs"] == ["203.0.113.0/24"]
        await _answers_after_refresh(ingest, source_id, new_secret, 403)

        unchanged = await client.patch(
            f"/ops/sources/{source_id}", json={"allowed_cidrs": ["203.0.113.0/24"]}
        )
        assert unchanged.json()["changed"] == []
        audit = (await client.get("/ops/audit", params={"source_id": source_id})).json()

    entries = audit["items"]
    assert all(entry["actor"] == "maria@example.com" for entry in entries)
    by_field = {entry["field"]: entry for entry in reversed(entries)}  # newest wins
    assert [entry["field"] for entry in entries].count("active") == 2
    assert by_field["active"]["old_value"] is False and by_field["active"]["new_value"] is True
    assert by_field["secrets"]["old_value"] == [fingerprint(new_secret), fingerprint(SECRET)]
    assert by_field["secrets"]["new_value"] == [fingerprint(new_secret)]
    assert by_field["max_silence_hours"]["old_value"] == 24.0
    assert by_field["allowed_cidrs"]["old_value"] == []
    assert len(entries) == 1 + 6 + 1 + 1  # the unchanged PATCH wrote nothing
    assert SECRET not in str(audit) and new_secret not in str(audit)
    # Stored sealed (ponte.shared.secret_box): the row holds neither secret in clear.
    stored = await pool.fetchval("SELECT s::text FROM sources s WHERE id = $1", source_id)
    assert new_secret not in stored and "fernet:" in stored


async def test_the_actor_defaults_to_the_token_name(
    ops: RunningOps, ingest: RunningIngest, source_id: str
) -> None:
    async with ops.client(**{"X-Ponte-Actor": "<script>"}) as client:
        await client.patch(f"/ops/sources/{source_id}", json={"business_rule": "x"})
        entries = (await client.get("/ops/audit", params={"source_id": source_id})).json()
    assert [entry["actor"] for entry in entries["items"]] == ["ops-token"]


async def test_unknown_source_edit_is_404(ops: RunningOps) -> None:
    async with ops.client() as client:
        answer = await client.patch("/ops/sources/does-not-exist", json={"active": False})
    assert answer.status_code == 404 and answer.json()["error"] == "unknown_source"


async def test_openapi_documents_the_bearer_scheme(ops: RunningOps) -> None:
    async with httpx.AsyncClient(base_url=ops.url) as client:
        answer = await client.get("/openapi.json")
    spec = answer.json()
    assert spec["components"]["securitySchemes"]["PonteOpsToken"]["scheme"] == "bearer"
    assert {"get", "patch"} <= set(spec["paths"]["/ops/sources/{source_id}"])
    assert "/ops/history/export" in spec["paths"] and "/ops/replay" in spec["paths"]
