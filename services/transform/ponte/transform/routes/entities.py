"""The CRM model and what is stored in it, read from the same registry the transform
writes with (``ponte.shared.crm_model``): a deployment's own entities and columns are
listed, counted and read like the shipped ones."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from ponte.shared.crm_model import crm_model
from ponte.shared.deps import PoolDep
from ponte.shared.ops_token import UNAUTHORIZED as OPS_TOKEN_MISSING
from ponte.shared.ops_token import OpsTokenRequired
from ponte.shared.probes import IdQuery

router = APIRouter(tags=["model"], dependencies=[OpsTokenRequired], responses=OPS_TOKEN_MISSING)
"""Rows are customers' data (names, documents): the ops token guards them."""

UNKNOWN_ENTITY: dict[int | str, dict[str, Any]] = {404: {"description": "No such entity."}}
EntityName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class ModelDescription(BaseModel):
    digest: str
    """The model's digest; ``ponte migrate`` records the one it applied."""
    files: list[str]
    entities: dict[str, Any]


class EntityCount(BaseModel):
    entity: str
    table: str
    parent: str | None
    live: int
    deleted: int


class Rows(BaseModel):
    entity: str
    count: int
    items: list[dict[str, Any]]
    next_after_id: int | None
    """Pass as ``after_id`` for the next page (None: this was the last)."""


@router.get("/model", summary="The CRM model: entities, typed columns, parents, references")
async def describe_model() -> ModelDescription:
    model = crm_model()
    return ModelDescription(digest=model.digest, files=list(model.files), entities=model.describe())


@router.get("/entities", summary="Every entity with its live and deleted row counts")
async def count_entities(pool: PoolDep, source_id: IdQuery = None) -> list[EntityCount]:
    model = crm_model()
    # Table names come from the model registry, never from the request.
    query = " UNION ALL ".join(
        f"SELECT '{spec.name}' AS entity, count(*) FILTER (WHERE deleted_at IS NULL) AS live, "  # noqa: S608
        f"count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted FROM {spec.table} "
        "WHERE ($1::text IS NULL OR source_id = $1)"
        for spec in model.entities.values()
    )
    counts = {row["entity"]: row for row in await pool.fetch(query, source_id)}
    return [
        EntityCount(
            entity=spec.name,
            table=spec.table,
            parent=spec.parent[0] if spec.parent else None,
            live=counts[spec.name]["live"],
            deleted=counts[spec.name]["deleted"],
        )
        for spec in model.entities.values()
    ]


@router.get(
    "/entities/{entity}/rows",
    summary="An entity's stored rows, oldest first, a page at a time",
    responses=UNKNOWN_ENTITY,
)
async def entity_rows(
    pool: PoolDep,
    entity: EntityName,
    source_id: IdQuery = None,
    include_deleted: bool = False,
    after_id: Annotated[int, Query(ge=0, le=2_147_483_647)] = 0,  # ids are int4
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Rows:
    model = crm_model()
    if entity not in model:
        raise HTTPException(
            404,
            {
                "error": "unknown_entity",
                "message": f"no entity {entity!r} in the CRM model "
                f"(entities: {', '.join(model.entities)})",
                "field": "entity",
            },
        )
    table = model.table_name(entity)
    filters = "($1::text IS NULL OR source_id = $1)" + (
        "" if include_deleted else " AND deleted_at IS NULL"
    )
    count = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {filters}", source_id)  # noqa: S608
    rows = await pool.fetch(
        f"SELECT * FROM {table} WHERE {filters} AND id > $2 ORDER BY id LIMIT $3",  # noqa: S608
        source_id,
        after_id,
        limit,
    )
    items = [dict(row) for row in rows]
    return Rows(
        entity=entity,
        count=int(count),
        items=items,
        next_after_id=items[-1]["id"] if len(items) == limit else None,
    )
