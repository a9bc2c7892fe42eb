"""Derived data: each company's ABC class by revenue, and its portfolio (carteira).

Seed 001's business rule: companies are ranked on an ABC curve of their revenue (orders
and/or invoices over a window), then filed in a portfolio by rules. Ponte computes both in
PostgreSQL, per source, and writes them on the company row (the model's ``derived: true``
columns), so the company's next change event carries them and the deliver service sends
them to the CRM as company properties like any other column (map ``abc_class`` /
``portfolio`` in a target).

The curve: companies sorted by revenue (largest first, ties by id); a company whose
*preceding* cumulative share is below ``a_share`` is A, below ``a_share + b_share`` is B,
otherwise C. Judging by the share before the company means the one that crosses 80% is
still A, so the A class always holds at least 80% of revenue. Companies without revenue in
the window are ``no_revenue_class``.

When it runs: every ``classification_interval_s`` (the window moves even when nothing
changes) and ``classification_debounce_s`` after a batch that changed orders or invoices.
One replica at a time (a transaction-level advisory lock); the company updates and their
change events are committed in one transaction through the outbox, like the transform's.

Change events of a classification keep the company's version and add a suffix to its
event id (``<event id>#classified:<time>``): newer than the version the CRM has, so the
deliver service sends it, yet older than the company's next real change.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ponte.shared import db
from ponte.shared.config_files import load_yaml
from ponte.shared.db import DbConnection
from ponte.shared.kafka import sleep_or_stop
from ponte.shared.settings import Settings
from ponte.shared.versions import Version
from ponte.transform.repository.changes import ChangeEvent

log = logging.getLogger(__name__)

CLASSIFICATION_LOCK = 0x706F6E7465_01  # advisory lock id: one classifier at a time
REVENUE_ENTITIES = frozenset({"order", "invoice"})
"""A committed change to one of these re-runs the classification (after the debounce)."""


class PortfolioRule(BaseModel):
    """``portfolio`` for companies matching every condition given (first rule wins)."""

    model_config = ConfigDict(extra="forbid")

    portfolio: str = Field(min_length=1)
    abc_class: list[str] | None = None
    state: list[str] | None = None
    """Company state (UF), e.g. [SP, RJ]."""
    segment: list[str] | None = None
    """Codes of the company's segment (the ERP's code list)."""
    salesperson: list[str] | None = None
    """Codes of the company's salesperson."""
    min_revenue: Decimal | None = None
    inactive_days_over: int | None = Field(default=None, gt=0)
    """No order for more than this many days (or never)."""

    def matches(self, company: CompanyRevenue, abc_class: str, now: datetime) -> bool:
        checks = (
            self.abc_class is None or abc_class in self.abc_class,
            self.state is None or (company.state or "") in self.state,
            self.segment is None or (company.segment or "") in self.segment,
            self.salesperson is None or (company.salesperson or "") in self.salesperson,
            self.min_revenue is None or company.revenue >= self.min_revenue,
            self.inactive_days_over is None
            or company.last_order_at is None
            or now - company.last_order_at > timedelta(days=self.inactive_days_over),
        )
        return all(checks)


class ClassificationConfig(BaseModel):
    """The business rule, from ``PONTE_CLASSIFICATION_FILE`` (defaults: seed 001's)."""

    model_config = ConfigDict(extra="forbid")

    window_days: int = Field(default=365, gt=0)
    revenue_from: list[Literal["orders", "invoices"]] = Field(default=["orders"], min_length=1)
    """Both: a company's orders and invoices are added (for sources that send only one)."""
    a_share: Decimal = Decimal("0.80")
    b_share: Decimal = Decimal("0.15")
    no_revenue_class: str = "C"
    portfolios: list[PortfolioRule] = Field(default_factory=list)
    default_portfolio: str | None = None
    """Portfolio of a company no rule matches (None: no portfolio)."""

    @model_validator(mode="after")
    def _shares(self) -> ClassificationConfig:
        if not (0 < self.a_share and 0 <= self.b_share and self.a_share + self.b_share <= 1):
            raise ValueError("a_share and b_share: need 0 < a_share, 0 <= b_share, sum <= 1")
        return self


def load_config(path: Path | None) -> ClassificationConfig:
    if path is None:
        return ClassificationConfig()
    document = load_yaml(path) or {}
    try:
        return ClassificationConfig.model_validate(document.get("classification", document))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


@dataclass
class CompanyRevenue:
    id: int
    revenue: Decimal
    state: str | None = None
    segment: str | None = None
    salesperson: str | None = None
    last_order_at: datetime | None = None


def rank_abc(
    revenues: Mapping[int, Decimal], a_share: Decimal, b_share: Decimal, no_revenue: str = "C"
) -> dict[int, str]:
    """ABC class per company id (see the module docstring for the rule)."""
    total = sum((r for r in revenues.values() if r > 0), Decimal(0))
    classes: dict[int, str] = {}
    before = Decimal(0)
    for company_id, revenue in sorted(revenues.items(), key=lambda item: (-item[1], item[0])):
        if revenue <= 0 or total == 0:
            classes[company_id] = no_revenue
            continue
        share_before = before / total
        if share_before < a_share:
            classes[company_id] = "A"
        elif share_before < a_share + b_share:
            classes[company_id] = "B"
        else:
            classes[company_id] = "C"
        before += revenue
    return classes


def portfolio_of(
    company: CompanyRevenue, abc_class: str, config: ClassificationConfig, now: datetime
) -> str | None:
    for rule in config.portfolios:
        if rule.matches(company, abc_class, now):
            return rule.portfolio
    return config.default_portfolio


_REVENUE_SQL = """
WITH revenue AS (
    SELECT company_id, sum(total) AS revenue FROM (
        SELECT company_id, total FROM orders
        WHERE $1 AND deleted_at IS NULL AND cancelled_at IS NULL
          AND issued_at >= $3 AND company_id IS NOT NULL AND total IS NOT NULL
        UNION ALL
        SELECT company_id, total FROM invoices
        WHERE $2 AND deleted_at IS NULL
          AND issued_at >= $3 AND company_id IS NOT NULL AND total IS NOT NULL
    ) AS r GROUP BY company_id
), last_order AS (
    SELECT company_id, max(issued_at) AS at FROM orders
    WHERE deleted_at IS NULL AND company_id IS NOT NULL GROUP BY company_id
)
SELECT c.id, c.source_id, c.state, c.abc_class, c.portfolio, c.abc_revenue,
       seg.code AS segment, sp.code AS salesperson,
       coalesce(r.revenue, 0) AS revenue, lo.at AS last_order_at
FROM companies c
LEFT JOIN revenue r ON r.company_id = c.id
LEFT JOIN last_order lo ON lo.company_id = c.id
LEFT JOIN codes seg ON seg.id = c.segment_id
LEFT JOIN salespeople sp ON sp.id = c.salesperson_id
WHERE c.deleted_at IS NULL
"""


@dataclass
class Classified:
    company_id: int
    abc_class: str
    portfolio: str | None
    revenue: Decimal


async def classify(
    connection: DbConnection, config: ClassificationConfig, now: datetime
) -> list[Classified]:
    """Every live company's class and portfolio, ranked per source (nothing written)."""
    rows = await connection.fetch(
        _REVENUE_SQL,
        "orders" in config.revenue_from,
        "invoices" in config.revenue_from,
        now - timedelta(days=config.window_days),
    )
    per_source: dict[str, list[CompanyRevenue]] = defaultdict(list)
    for row in rows:
        per_source[row["source_id"]].append(
            CompanyRevenue(
                row["id"],
                Decimal(row["revenue"]),
                row["state"],
                row["segment"],
                row["salesperson"],
                row["last_order_at"],
            )
        )
    result = []
    for companies in per_source.values():
        classes = rank_abc(
            {c.id: c.revenue for c in companies},
            config.a_share,
            config.b_share,
            config.no_revenue_class,
        )
        for company in companies:
            abc = classes[company.id]
            result.append(
                Classified(
                    company.id, abc, portfolio_of(company, abc, config, now), company.revenue
                )
            )
    return result


async def apply_classification(
    connection: DbConnection, config: ClassificationConfig, now: datetime
) -> list[ChangeEvent] | None:
    """Write what changed and return its change events (the caller adds them to the
    outbox in the same transaction). None: another replica is classifying right now."""
    if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", CLASSIFICATION_LOCK):
        return None
    stored = {
        row["id"]: row
        for row in await connection.fetch(
            "SELECT id, abc_class, portfolio, abc_revenue FROM companies WHERE deleted_at IS NULL"
        )
    }
    changed = [
        item
        for item in await classify(connection, config, now)
        if _differs(item, stored.get(item.company_id))
    ]
    if not changed:
        return []
    # FOR UPDATE semantics come with UPDATE: a company the transform is writing right now
    # waits for it, and RETURNING gives the row as committed, with its version.
    rows = await connection.fetch(
        "UPDATE companies AS c SET abc_class = u.abc_class, portfolio = u.portfolio, "
        "abc_revenue = u.revenue, classified_at = $5 "
        "FROM unnest($1::int[], $2::text[], $3::text[], $4::numeric[]) "
        "AS u(id, abc_class, portfolio, revenue) WHERE c.id = u.id AND c.deleted_at IS NULL "
        "RETURNING c.*",
        [item.company_id for item in changed],
        [item.abc_class for item in changed],
        [item.portfolio for item in changed],
        [item.revenue for item in changed],
        now,
    )
    return [
        ChangeEvent.of(
            "company",
            row,
            "upsert",
            Version(
                row["version_at"],
                row["version_seq"],
                f"{row['version_event_id'] or ''}#classified:{now.isoformat()}",
            ),
            ["abc_class", "portfolio", "abc_revenue", "classified_at"],
        )
        for row in rows
    ]


def _differs(item: Classified, stored: asyncpg.Record | None) -> bool:
    if stored is None:
        return False  # deleted meanwhile
    revenue = stored["abc_revenue"]
    return (
        stored["abc_class"] != item.abc_class
        or stored["portfolio"] != item.portfolio
        or revenue is None
        or Decimal(revenue) != item.revenue
    )


class Classifier:
    """Runs the classification on schedule and soon after revenue changes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: ClassificationConfig,
        publish: Any,
        *,
        interval_s: float,
        debounce_s: float,
    ) -> None:
        self._pool = pool
        self._config = config
        self._publish = publish
        """(connection, change events) -> None: queue them in the outbox."""
        self._interval_s = interval_s
        self._debounce_s = debounce_s
        self._dirty = asyncio.Event()

    def revenue_changed(self, entities: Sequence[str]) -> None:
        """Called after a transform batch commits, with the entities it changed."""
        if REVENUE_ENTITIES.intersection(entities):
            self._dirty.set()

    async def run_once(self, now: datetime | None = None) -> int | None:
        """Classify now; the number of companies that changed (None: another replica)."""
        async with self._pool.acquire() as connection, connection.transaction():
            changes = await apply_classification(connection, self._config, now or datetime.now(UTC))
            if changes:
                await self._publish(connection, changes)
        if changes:
            log.info("companies classified", extra={"changed": len(changes)})
        return None if changes is None else len(changes)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("classification failed; will retry", extra={"error": repr(error)})
            dirty = asyncio.create_task(self._dirty.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {dirty, stopped}, timeout=self._interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            dirty.cancel()
            stopped.cancel()
            if self._dirty.is_set() and not await sleep_or_stop(stop, self._debounce_s):
                self._dirty.clear()


async def classify_companies(settings: Settings, *, dry_run: bool) -> dict[str, int]:
    """``ponte classify``: companies per class, computed now (written unless dry run)."""
    from ponte.transform.processor import BatchProcessor  # the CLI's path only

    config = load_config(settings.classification_file)
    pool = await db.create_pool(settings)
    try:
        if dry_run:
            async with pool.acquire() as connection:
                classified = await classify(connection, config, datetime.now(UTC))
        else:
            processor = BatchProcessor(pool, settings)
            classifier = Classifier(
                pool, config, processor.queue_changes, interval_s=0, debounce_s=0
            )
            await classifier.run_once()
            async with pool.acquire() as connection:
                classified = await classify(connection, config, datetime.now(UTC))
    finally:
        await pool.close()
    counts: dict[str, int] = defaultdict(int)
    for item in classified:
        counts[item.abc_class] += 1
    return dict(sorted(counts.items()))
