"""The ABC curve and portfolios: a hand-computed example, then the real PostgreSQL with
ERP events applied by the transform's own code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from ponte.shared.db import DbConnection
from ponte.shared.mapping import default_mapping
from ponte.transform.classification import (
    ClassificationConfig,
    Classifier,
    CompanyRevenue,
    PortfolioRule,
    portfolio_of,
    rank_abc,
)
from ponte.transform.normalize import normalize_record
from ponte.transform.repository.applier import BatchApplier
from ponte.transform.repository.changes import ChangeEvent
from tests.eventually import eventually
from tests.transform.conftest import raw_event

ERP = default_mapping("erp")
NOW = datetime(2024, 12, 1, tzinfo=UTC)


def test_hand_computed_curve() -> None:
    """Revenue 50, 30, 10, 5, 3, 2 (total 100): A holds 80%, B 15%, C 5%."""
    revenues = {1: Decimal(50), 2: Decimal(30), 3: Decimal(10), 4: Decimal(5), 5: Decimal(3)}
    revenues |= {6: Decimal(2), 7: Decimal(0)}
    classes = rank_abc(revenues, Decimal("0.80"), Decimal("0.15"), no_revenue="C")
    assert classes == {1: "A", 2: "A", 3: "B", 4: "B", 5: "C", 6: "C", 7: "C"}


def test_the_company_that_crosses_a_threshold_stays_in_the_higher_class() -> None:
    # 90 alone passes 80%: still A. 5 starts at 90%: B. The last starts at 95%: C.
    classes = rank_abc(
        {10: Decimal(90), 11: Decimal(5), 12: Decimal(5)}, Decimal("0.8"), Decimal("0.15")
    )
    assert classes == {10: "A", 11: "B", 12: "C"}
    # Ties are broken by id, so the result does not depend on the input order.
    assert rank_abc({2: Decimal(1), 1: Decimal(1)}, Decimal("0.5"), Decimal("0.5")) == {
        1: "A",
        2: "B",
    }


def test_portfolio_rules_first_match_wins() -> None:
    config = ClassificationConfig(
        portfolios=[
            PortfolioRule(portfolio="Inativos", inactive_days_over=180),
            PortfolioRule(portfolio="Key accounts SP", abc_class=["A"], state=["SP"]),
            PortfolioRule(portfolio="Varejo", segment=["VAR"]),
        ],
        default_portfolio="Geral",
    )
    recent = NOW - timedelta(days=3)
    assert (
        portfolio_of(CompanyRevenue(1, Decimal(9), "SP", None, None, recent), "A", config, NOW)
        == "Key accounts SP"
    )
    assert (
        portfolio_of(CompanyRevenue(1, Decimal(9), "RJ", "VAR", None, recent), "A", config, NOW)
        == "Varejo"
    )
    assert (
        portfolio_of(CompanyRevenue(1, Decimal(9), "SP", None, None, None), "A", config, NOW)
        == "Inativos"
    )
    assert (
        portfolio_of(CompanyRevenue(1, Decimal(9), "RJ", None, None, recent), "B", config, NOW)
        == "Geral"
    )


def test_invalid_shares_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="a_share"):
        ClassificationConfig(a_share=Decimal("0.9"), b_share=Decimal("0.2"))


# --- against PostgreSQL ---------------------------------------------------------------


def company(code: str, uf: str = "SP") -> dict[str, Any]:
    return {"codigo": code, "razao_social": f"Empresa {code} Ltda", "uf": uf}


def order(code: str, company_code: str, total: str, issued: str = "14/11/2024") -> dict[str, Any]:
    return {"codigo": code, "empresa": company_code, "emissao": issued, "total": total}


async def apply(
    pool: asyncpg.Pool, source_id: str, *rows: tuple[str, dict[str, Any]], minute: int = 0
) -> list[ChangeEvent]:
    events = [raw_event(table, row, source_id=source_id, minute=minute) for table, row in rows]
    async with pool.acquire() as connection, connection.transaction():
        result = await BatchApplier(connection).apply([normalize_record(e, ERP) for e in events])
    return result.changes


class Published:
    """What the classifier queued for the outbox (the transform passes its own)."""

    def __init__(self) -> None:
        self.changes: list[ChangeEvent] = []

    async def __call__(self, connection: DbConnection, changes: list[ChangeEvent]) -> None:
        assert connection.is_in_transaction(), "change events go out with the update"
        self.changes += changes


async def classes_of(pool: asyncpg.Pool, source_id: str) -> dict[str, tuple[str, str | None]]:
    rows = await pool.fetch(
        "SELECT source_key, abc_class, portfolio FROM companies WHERE source_id = $1", source_id
    )
    return {r["source_key"]: (r["abc_class"], r["portfolio"]) for r in rows}


pg = pytest.mark.integration


@pg
async def test_companies_are_classified_and_their_change_events_carry_it(
    pool: asyncpg.Pool, source_id: str
) -> None:
    await apply(
        pool,
        source_id,
        *[
            ("Empresa", company(code, "SP" if code != "E4" else "RJ"))
            for code in ("E1", "E2", "E3", "E4", "E5")
        ],
        ("Pedido", order("P1", "E1", "5.000,00")),
        ("Pedido", order("P2", "E2", "3.000,00")),
        ("Pedido", order("P3", "E3", "1.000,00")),
        ("Pedido", order("P4", "E4", "500,00")),
        ("Pedido", order("P5", "E4", "500,00")),
        ("Pedido", order("OLD", "E5", "9.999,00", issued="01/01/2020")),  # outside the window
    )
    config = ClassificationConfig(
        window_days=365,
        portfolios=[PortfolioRule(portfolio="Key accounts", abc_class=["A"], state=["SP"])],
        default_portfolio="Geral",
    )
    published = Published()
    classifier = Classifier(pool, config, published, interval_s=3600, debounce_s=0)
    assert await classifier.run_once(NOW) is not None
    assert await classes_of(pool, source_id) == {
        "E1": ("A", "Key accounts"),  # 5000 of 10000: starts at 0%
        "E2": ("A", "Key accounts"),  # starts at 50%
        "E3": ("B", "Geral"),  # starts at 80%
        "E4": ("B", "Geral"),  # 1000 in two orders, ties E3 and comes after it: at 90%
        "E5": ("C", "Geral"),  # its only order is outside the window
    }
    mine = {c.source_key: c for c in published.changes if c.source_id == source_id}
    assert set(mine) == {"E1", "E2", "E3", "E4", "E5"}
    e1 = mine["E1"]
    assert e1.entity == "company" and e1.row["abc_class"] == "A"
    assert e1.row["abc_revenue"] == Decimal("5000.0000")
    assert e1.row["legal_name"] == "Empresa E1 Ltda"  # the whole row, for the CRM
    # Newer than the company's own version (so deliver sends it), same occurred_at.
    stored = await pool.fetchrow(
        "SELECT version_at, version_event_id FROM companies "
        "WHERE source_id = $1 AND source_key = 'E1'",
        source_id,
    )
    assert e1.version is not None and e1.version.at == stored["version_at"]
    assert e1.version.event_id.startswith(stored["version_event_id"] + "#classified:")

    # Nothing changed: nothing written, nothing published.
    published.changes.clear()
    await classifier.run_once(NOW)
    assert [c for c in published.changes if c.source_id == source_id] == []

    # A big order for E5 (90,000 of 100,000) re-ranks everyone it moves.
    await apply(pool, source_id, ("Pedido", order("P9", "E5", "90.000,00")), minute=5)
    await classifier.run_once(NOW)
    now = await classes_of(pool, source_id)
    assert (now["E5"], now["E1"][0], now["E2"][0]) == (("A", "Key accounts"), "B", "C")
    assert {c.source_key for c in published.changes if c.source_id == source_id} == {
        "E1",
        "E2",
        "E3",
        "E4",
        "E5",
    }


@pg
async def test_a_transform_update_keeps_the_class_and_carries_it(
    pool: asyncpg.Pool, source_id: str
) -> None:
    await apply(pool, source_id, ("Empresa", company("E1")), ("Pedido", order("P1", "E1", "10,00")))
    await Classifier(
        pool, ClassificationConfig(), Published(), interval_s=1, debounce_s=0
    ).run_once(NOW)
    changes = await apply(
        pool, source_id, ("Empresa", {**company("E1"), "razao_social": "Renamed Ltda"}), minute=9
    )
    assert (await classes_of(pool, source_id))["E1"] == ("A", None)
    [change] = [c for c in changes if c.entity == "company"]
    assert change.row["legal_name"] == "Renamed Ltda" and change.row["abc_class"] == "A"


@pg
async def test_a_mapping_may_not_write_derived_columns() -> None:
    from ponte.shared.mapping import Mapping

    with pytest.raises(ValueError, match="abc_class"):
        Mapping.model_validate(
            {
                "tables": {
                    "Empresa": {
                        "entity": "company",
                        "key": ["codigo"],
                        "fields": {"codigo": "code", "curva": "abc_class"},
                    }
                }
            }
        )


@pg
async def test_revenue_changes_trigger_a_run_after_the_debounce(
    pool: asyncpg.Pool, source_id: str
) -> None:
    import asyncio

    await apply(pool, source_id, ("Empresa", company("E1")))
    published = Published()
    # It runs on the clock: a window wide enough for the 2024 dates of the fixtures.
    classifier = Classifier(
        pool, ClassificationConfig(window_days=36500), published, interval_s=3600, debounce_s=0.1
    )
    stop = asyncio.Event()
    task = asyncio.create_task(classifier.run(stop))
    try:
        await eventually(  # the first run, at start (abc_class is NULL until then)
            lambda: classes_of(pool, source_id),
            satisfied=lambda classes: classes["E1"] == ("C", None),
            timeout_s=5,
            task=task,
            message="E1 classified C by the run at start",
        )
        await apply(pool, source_id, ("Pedido", order("P1", "E1", "10,00")), minute=1)
        classifier.revenue_changed(["company"])  # not revenue: no run
        # A settle window, not a wait: four debounces in which a run would have made E1 A.
        await asyncio.sleep(0.4)
        assert (await classes_of(pool, source_id))["E1"] == ("C", None)
        classifier.revenue_changed(["order", "order_item"])
        await eventually(
            lambda: classes_of(pool, source_id),
            satisfied=lambda classes: classes["E1"][0] == "A",
            timeout_s=5,
            task=task,
            message="E1 classified A after the revenue change",
        )
        assert (await classes_of(pool, source_id))["E1"] == ("A", None)
    finally:
        stop.set()
        await task
    assert f"company/{source_id}/E1" in {c.key for c in published.changes}


def test_the_example_file_is_valid() -> None:
    from pathlib import Path

    from ponte.transform.classification import load_config

    config = load_config(Path(__file__).parents[2] / "classification.example.yaml")
    assert [rule.portfolio for rule in config.portfolios][:2] == ["Inativos", "Key accounts"]
    assert config.default_portfolio == "Geral"
