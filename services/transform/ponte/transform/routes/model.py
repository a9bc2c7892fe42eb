"""What the transform could not finish, for the people who fix it: parked references,
rejected records, fields the mapping does not place and rows its skip rules left out."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ponte.shared.crm import ParkedReference, TransformRejection, UnmappedField
from ponte.shared.deps import PoolDep
from ponte.shared.models import SkippedRows
from ponte.shared.ops_token import UNAUTHORIZED as OPS_TOKEN_MISSING
from ponte.shared.ops_token import OpsTokenRequired
from ponte.shared.probes import IdQuery

router = APIRouter(tags=["transform"], dependencies=[OpsTokenRequired], responses=OPS_TOKEN_MISSING)
"""Every route here returns stored data (payloads, CNPJs, names): the ops token guards it."""

Limit = Annotated[int, Query(ge=1, le=1000)]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    count: int
    items: list[T]


async def _page(
    pool: Any, table: str, order: str, source_id: str | None, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    # table and order are constants from this module, never user input.
    where = "WHERE ($1::text IS NULL OR source_id = $1)"
    count_sql = f"SELECT count(*) FROM {table} {where}"  # noqa: S608
    page_sql = f"SELECT * FROM {table} {where} ORDER BY {order} LIMIT $2"  # noqa: S608
    count = await pool.fetchval(count_sql, source_id)
    rows = await pool.fetch(page_sql, source_id, limit)
    return int(count), [dict(row) for row in rows]


class WaitingReference(BaseModel):
    """A parked reference as a person reads it: what waits, for what, why, since when."""

    source_id: str
    entity: str
    row_id: int
    column_name: str
    field: str
    target_entity: str
    target_source: str
    """The target's source (the row's own unless the mapping names another)."""
    target_field: str | None
    """The target's column matched (None: its ERP key)."""
    target_key: str
    reason: str | None
    event_id: str
    parked_at: datetime
    age_s: float
    """How long it has waited; past ``parked_reference_expiry_s`` it is dead-lettered."""


@router.get("/parked-references", summary="References waiting for their target row")
async def parked_references(
    pool: PoolDep, source_id: IdQuery = None, limit: Limit = 100
) -> Page[WaitingReference]:
    count, rows = await _page(pool, "parked_references", "parked_at", source_id, limit)
    now = datetime.now(UTC)
    items = [
        WaitingReference(
            **{k: v for k, v in ParkedReference(**r).model_dump().items() if k != "id"}
            | {"target_source": r["target_source"] or r["source_id"]},
            age_s=round((now - r["parked_at"]).total_seconds(), 3),
        )
        for r in rows
    ]
    return Page[WaitingReference](count=count, items=items)


@router.get("/rejections", summary="Records that could not be stored, with field and reason")
async def rejections(
    pool: PoolDep, source_id: IdQuery = None, limit: Limit = 100
) -> Page[TransformRejection]:
    count, rows = await _page(pool, "transform_rejections", "rejected_at DESC", source_id, limit)
    return Page[TransformRejection](count=count, items=[TransformRejection(**r) for r in rows])


@router.get("/unmapped-fields", summary="Tables and fields the mapping does not place")
async def unmapped_fields(
    pool: PoolDep, source_id: IdQuery = None, limit: Limit = 100
) -> Page[UnmappedField]:
    count, rows = await _page(pool, "unmapped_fields", "last_seen DESC", source_id, limit)
    return Page[UnmappedField](count=count, items=[UnmappedField(**r) for r in rows])


@router.get("/skipped-rows", summary="Rows the mapping's skip rules left out, per table and rule")
async def skipped_rows(
    pool: PoolDep, source_id: IdQuery = None, limit: Limit = 100
) -> Page[SkippedRows]:
    count, rows = await _page(pool, "skipped_rows", "last_seen DESC", source_id, limit)
    return Page[SkippedRows](count=count, items=[SkippedRows(**r) for r in rows])


class CompanyClass(BaseModel):
    id: int
    source_id: str
    source_key: str
    legal_name: str | None
    document: str | None
    abc_class: str | None
    portfolio: str | None
    abc_revenue: Decimal | None
    classified_at: datetime | None


@router.get(
    "/classification",
    summary="Companies' ABC class and portfolio, largest revenue first (seed 001's rule)",
)
async def classification(
    pool: PoolDep,
    source_id: IdQuery = None,
    abc_class: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,16}$")] = None,
    limit: Limit = 100,
) -> Page[CompanyClass]:
    where = (
        "WHERE deleted_at IS NULL AND ($1::text IS NULL OR source_id = $1) "
        "AND ($2::text IS NULL OR abc_class = $2)"
    )
    count = await pool.fetchval(f"SELECT count(*) FROM companies {where}", source_id, abc_class)  # noqa: S608
    rows = await pool.fetch(
        f"SELECT {', '.join(CompanyClass.model_fields)} FROM companies {where} "  # noqa: S608
        "ORDER BY abc_revenue DESC NULLS LAST, id LIMIT $3",
        source_id,
        abc_class,
        limit,
    )
    return Page[CompanyClass](count=int(count), items=[CompanyClass(**dict(r)) for r in rows])
