"""Sources YAML and its storage in PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from ponte.shared.sources import SourceConfig, apply_sources, fetch_sources, load_sources_file
from tests.conftest import BOX


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERP_SECRET", "from-env")
    path = write(tmp_path, "sources:\n  - {id: erp-a, kind: erp, secrets: ['${ERP_SECRET}']}\n")
    assert load_sources_file(path)[0].secrets == ["from-env"]
    assert "from-env" not in repr(load_sources_file(path)[0])


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  - {id: erp-a, kind: erp, secrets: ['${PONTE_NOPE_X}']}\n")
    with pytest.raises(ValueError, match="PONTE_NOPE_X"):
        load_sources_file(path)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("{id: erp-a, kind: sap, secrets: [x]}", "kind"),
        ("{id: erp-a, kind: erp, secrets: []}", "secrets"),
        ("{id: erp-a, kind: erp, secrets: [a, b, c]}", "secrets"),
        ("{id: erp-a, kind: erp, secrets: [x], allowed_cidrs: [300.1.1.1/8]}", "allowed_cidrs"),
        ("{id: 'Bad Id', kind: erp, secrets: [x]}", "id"),
        ("{id: erp-a, kind: erp, secrets: [x], tabels: [Pedido]}", "tabels"),
    ],
)
def test_invalid_entries_name_the_field(tmp_path: Path, entry: str, field: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_sources_file(write(tmp_path, f"sources:\n  - {entry}\n"))
    message = str(caught.value)
    assert "sources[0]" in message and f"{field}:" in message
    assert "input_value" not in message  # the input (it holds the secrets) is never echoed


def test_an_invalid_source_never_shows_its_secrets(tmp_path: Path) -> None:
    secret = "whsec_TOPSECRETVALUE1234567890"
    with pytest.raises(ValueError) as caught:
        load_sources_file(
            write(tmp_path, f"sources:\n  - {{id: erp-a, kind: erp, secrets: [{secret}, b, c]}}\n")
        )
    assert "secrets:" in str(caught.value) and "TOPSECRET" not in str(caught.value)


def test_table_filter_matches_tables_and_shop_resources() -> None:
    erp = SourceConfig(id="e", kind="erp", secrets=["x"], tables=["Pedido"])
    assert erp.allows_table("Pedido") and erp.allows_table("pedido")
    assert not erp.allows_table("Fatura")
    shop = SourceConfig(id="s", kind="shopify", secrets=["x"], tables=["orders"])
    assert shop.allows_table("orders/create") and not shop.allows_table("customers/create")
    assert SourceConfig(id="a", kind="erp", secrets=["x"]).allows_table("anything")


@pytest.mark.integration
async def test_file_wins_only_when_it_changes(pool: asyncpg.Pool) -> None:
    config = SourceConfig(id="src-apply", kind="erp", secrets=["one"], tables=["Pedido"])
    assert (await apply_sources(pool, [config], BOX))["src-apply"] == "created"
    assert (await apply_sources(pool, [config], BOX))["src-apply"] == "kept"

    # A change made through the database (as the ops API will) survives a restart...
    await pool.execute("UPDATE sources SET active = false WHERE id = 'src-apply'")
    assert (await apply_sources(pool, [config], BOX))["src-apply"] == "kept"
    assert (await fetch_sources(pool, BOX))["src-apply"].active is False

    # ...until the file itself changes.
    changed = config.model_copy(update={"secrets": ["one", "two"]})
    assert (await apply_sources(pool, [changed], BOX))["src-apply"] == "updated"
    stored = (await fetch_sources(pool, BOX))["src-apply"]
    assert stored.secrets == ["one", "two"] and stored.active is True
