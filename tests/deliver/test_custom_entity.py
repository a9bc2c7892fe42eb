"""An entity of the deployment's own model (``PONTE_MODEL_FILE``) is deliverable like a
shipped one: a REST target maps its columns, its reference to a shipped entity travels as
that record's CRM id, and a column the model does not have is refused at load."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ponte.deliver.connectors.registry import parse_target
from ponte.shared.settings import Settings
from tests.deliver.conftest import company_change, delivering, produce, until
from tests.stand_ins.rest_crm import RestCrmState, create_stand_in
from tests.stand_ins.serve import serve

pytestmark = pytest.mark.integration

MODEL = """
entities:
  visit:
    columns:
      company_id: {reference: company, index: true}
      visited_on: date
      outcome: text
"""


@pytest.fixture(autouse=True)
def custom_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(MODEL, encoding="utf-8")
    monkeypatch.setenv("PONTE_MODEL_FILE", str(path))


@pytest.fixture
async def crm() -> AsyncIterator[tuple[RestCrmState, str]]:
    state = RestCrmState()
    async with serve(create_stand_in(state)) as url:
        yield state, url


def target(url: str, source_id: str, **visit: Any) -> Any:
    login = RestCrmState()  # the stand-in's credentials (the same for every state)

    def crud(object_type: str) -> dict[str, Any]:
        return {
            "object_type": object_type,
            "create": {"method": "POST", "path": f"/v1/{object_type}"},
            "update": {"method": "PUT", "path": f"/v1/{object_type}/{{crm_id}}"},
            "delete": {"method": "DELETE", "path": f"/v1/{object_type}/{{crm_id}}"},
            "id_path": "data.id",
        }

    return parse_target(
        {
            "id": f"rest-{source_id}",
            "kind": "rest",
            "base_url": url,
            "auth": {
                "type": "login",
                "path": "/v1/auth/login",
                "body": {"email": login.email, "password": login.password},
                "token": "data.token",
                "expires_in": "data.expires_in",
            },
            "sources": [source_id],
            "objects": {
                "company": {**crud("organizations"), "properties": {"legal_name": "name"}},
                "visit": {
                    **crud("visits"),
                    "properties": {"visited_on": "date", "outcome": "result"},
                    "references": {"company_id": {"to": "org_id", "type": "integer"}},
                    **visit,
                },
            },
        }
    )


def visit_change(source_id: str, company_row_id: int) -> dict[str, Any]:
    return {
        "entity": "visit",
        "source_id": source_id,
        "source_key": "V1",
        "row_id": 900,
        "operation": "upsert",
        "changed": ["visited_on", "outcome", "company_id"],
        "version": {"at": "2024-11-14T15:05:00+00:00", "event_id": "e5"},
        "row": {"visited_on": "2026-12-02", "outcome": "pedido", "company_id": company_row_id},
    }


async def test_a_custom_entity_is_delivered_with_its_reference_as_a_crm_id(
    settings: Settings, pool: asyncpg.Pool, crm: tuple[RestCrmState, str]
) -> None:
    state, url = crm
    source_id = f"v-{uuid.uuid4().hex[:8]}"
    rest = target(url, source_id)
    # The visit first: it waits for its company's CRM id, then goes with it.
    await produce(settings, [visit_change(source_id, 41)])
    await produce(settings, [company_change(source_id, "E1", 1, row_id=41, legal_name="Acme")])

    def visits() -> list[dict[str, Any]]:
        return list(state.records.get("visits", {}).values())

    async def delivered() -> bool:
        return len(visits()) == 1

    async with delivering(settings, pool, rest) as task:
        await until(task, delivered)
    [organisation] = state.records["organizations"].values()
    [visit] = visits()
    assert visit["date"] == "2026-12-02" and visit["result"] == "pedido"
    assert visit["org_id"] == organisation["id"]  # the CRM's id, never Ponte's 41


def test_a_custom_entitys_unknown_column_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="'mood' is not a column of visit"):
        target("http://crm.invalid", "v-x", properties={"mood": "mood"})
    with pytest.raises(ValueError, match="is not a reference column of visit"):
        target("http://crm.invalid", "v-x", references={"outcome": "org_id"})
