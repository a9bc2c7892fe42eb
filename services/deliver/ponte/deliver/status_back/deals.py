"""Which record Ponte delivered as a CRM deal, and so which origin its status goes back to:
read from ``deliveries`` (target + CRM id -> entity, source, source key). A deal that is
the CRM record of two Ponte records is refused, never guessed."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ponte.deliver.origin import ErpOrigin, ShopifyOrigin, WooCommerceOrigin
from ponte.deliver.status_back.events import CrmEvent
from ponte.deliver.status_back.outcomes import Outcome


@dataclass(frozen=True)
class OriginRecord:
    """The Ponte record a deal is, and the configured origin it came from."""

    entity: str
    source_id: str
    source_key: str
    origin: ShopifyOrigin | WooCommerceOrigin | ErpOrigin


class DeliveredDeals:
    """Looks a deal up among the records delivered for the configured origins' entities."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        origins: dict[str, ShopifyOrigin | WooCommerceOrigin | ErpOrigin],
    ) -> None:
        self._pool = pool
        self._origins = origins
        self._entities = sorted({origin.entity for origin in origins.values()})

    async def origin_record(self, event: CrmEvent) -> OriginRecord | Outcome:
        """The deal's one origin record, or the outcome saying why there is none."""
        rows = await self._pool.fetch(
            "SELECT entity, source_id, source_key FROM deliveries "
            "WHERE target_id = $1 AND crm_id = $2 AND entity = ANY($3::text[]) "
            "ORDER BY updated_at DESC",
            event.target_id,
            event.crm_id,
            self._entities,
        )
        if not rows:
            return Outcome(event, "ignored", f"deal {event.crm_id} was not delivered by Ponte")
        candidates = [
            r
            for r in rows
            if r["source_id"] in self._origins
            and self._origins[r["source_id"]].entity == r["entity"]
        ]
        if len(candidates) > 1:
            return _refused(event, candidates)
        if not candidates:
            return Outcome(
                event,
                "ignored",
                f"no origin configured for source {rows[0]['source_id']}",
                rows[0]["entity"],
                rows[0]["source_id"],
                rows[0]["source_key"],
            )
        row = candidates[0]
        return OriginRecord(
            row["entity"], row["source_id"], row["source_key"], self._origins[row["source_id"]]
        )


def _refused(event: CrmEvent, candidates: list[asyncpg.Record]) -> Outcome:
    """Two Ponte records delivered to one CRM record (an earlier wrong match, or a merge in
    the CRM): the status could belong to either origin. Refuse, visibly."""
    listed = ", ".join(f"{r['source_id']}/{r['entity']}/{r['source_key']}" for r in candidates)
    return Outcome(
        event,
        "failed",
        f"deal {event.crm_id} is the CRM record of {len(candidates)} Ponte records "
        f"({listed}); Ponte will not guess which origin this status is for",
    )
