"""The onboarding check (seed 001, 2.1): did the historic data really arrive?

Per source table (as the ERP names it: Pedido, Empresa...), what happened at each step:
- ``requests`` / ``records``: accepted webhook requests naming the table, and the records
  they carried (from the request history, so only within ``history_retention_days``);
- ``stored``: live CRM rows that came from it;
- ``parked``: of those, rows still waiting for a referenced row (``parked_references``);
- ``delivered`` / ``failed``: rows delivered to at least one CRM target, or failed at one;
- ``skipped``: rows the mapping's skip rules left out, ever (``skipped_rows``; the
  transform's ``GET /skipped-rows`` says which rule).
A table received but not stored points at the transform (see its rejections, and what it
skipped on purpose); stored but not delivered points at the deliver service.
"""

from __future__ import annotations

import asyncpg
from pydantic import BaseModel

from ponte.shared.crm_model import crm_model


class TableProgress(BaseModel):
    table: str
    requests: int = 0
    records: int = 0
    stored: int = 0
    parked: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0


class Onboarding(BaseModel):
    source_id: str
    tables: list[TableProgress]
    history_retention_days: int
    note: str = (
        "requests and records come from the request history, kept history_retention_days; "
        "stored, parked, delivered and failed are counted in the CRM model now; skipped since "
        "the first skip"
    )


def _stored_query() -> str:
    parts = []
    for entity, spec in crm_model().entities.items():
        table = spec.table
        parts.append(
            f"SELECT r.source_table, count(*) AS stored, "  # noqa: S608 - names from the registry
            f"count(*) FILTER (WHERE EXISTS (SELECT 1 FROM parked_references p "
            f"WHERE p.entity = '{entity}' AND p.row_id = r.id)) AS parked, "
            f"count(*) FILTER (WHERE EXISTS (SELECT 1 FROM deliveries d "
            f"WHERE d.entity = '{entity}' AND d.source_id = r.source_id "
            f"AND d.source_key = r.source_key AND d.state = 'delivered')) AS delivered, "
            f"count(*) FILTER (WHERE EXISTS (SELECT 1 FROM deliveries d "
            f"WHERE d.entity = '{entity}' AND d.source_id = r.source_id "
            f"AND d.source_key = r.source_key AND d.state = 'failed')) AS failed "
            f"FROM {table} r WHERE r.source_id = $1 AND r.deleted_at IS NULL "
            f"GROUP BY r.source_table"
        )
    return " UNION ALL ".join(parts)


STORED_QUERY = _stored_query()

RECEIVED_QUERY = """
SELECT t.table_name AS source_table, count(*) AS requests,
       coalesce(sum(CASE WHEN t.position = 1
                    THEN (w.response_body->>'records')::bigint END), 0)::bigint AS records
FROM webhook_requests w, unnest(w.tables) WITH ORDINALITY AS t(table_name, position)
WHERE w.source_id = $1 AND w.outcome = 'accepted'
GROUP BY t.table_name
"""
"""A request's records are counted under its first table (an envelope's own table);
its child tables count the request, not the records again."""

SKIPPED_QUERY = """
SELECT source_table, sum(occurrences)::bigint AS skipped FROM skipped_rows
WHERE source_id = $1 GROUP BY source_table
"""


async def onboarding(pool: asyncpg.Pool, source_id: str, retention_days: int) -> Onboarding:
    progress: dict[str, TableProgress] = {}

    def entry(table: str) -> TableProgress:
        return progress.setdefault(table, TableProgress(table=table))

    async with pool.acquire() as connection:
        for row in await connection.fetch(RECEIVED_QUERY, source_id):
            entry(row["source_table"]).requests = row["requests"]
            entry(row["source_table"]).records = row["records"]
        for row in await connection.fetch(STORED_QUERY, source_id):
            table = entry(row["source_table"])
            table.stored += row["stored"]
            table.parked += row["parked"]
            table.delivered += row["delivered"]
            table.failed += row["failed"]
        for row in await connection.fetch(SKIPPED_QUERY, source_id):
            entry(row["source_table"]).skipped = row["skipped"]
    return Onboarding(
        source_id=source_id,
        tables=sorted(progress.values(), key=lambda table: table.table.lower()),
        history_retention_days=retention_days,
    )
