"""``POST /sources/{source_id}/mapping/check``: the dry run (``ponte.transform.dry_run``)
over HTTP, for the operator trying a mapping on real samples before saving it.

It lives in the transform's API, not in ops: it runs the transform's own normalisation,
which ops may not import (the module docstring of ``dry_run`` says why in full). Guarded
by the ops token like the transform's other operator routes; it reads PostgreSQL (the
source's kind, the references' targets) in a read-only transaction and writes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ponte.shared.config_files import parse_yaml
from ponte.shared.deps import PoolDep, SettingsDep
from ponte.shared.mapping import Mapping, mapping_for, mapping_origin
from ponte.shared.ops_token import UNAUTHORIZED, OpsTokenRequired
from ponte.shared.problems import field_problems, invalid, invalid_field
from ponte.shared.rejections import Rejection
from ponte.shared.source_kinds import SourceKind
from ponte.transform.dry_run import (
    MAX_SAMPLES,
    DryRunReport,
    SampleError,
    check,
    check_references,
    parse_samples,
)

router = APIRouter(tags=["mapping"], dependencies=[OpsTokenRequired], responses=UNAUTHORIZED)

SourceId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Source id.")]


class MappingCheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_SAMPLES,
        description="Deliveries as posted to ingest (an ERP envelope; a shop's resource as "
        "{topic, body}), or Ponte raw events.",
    )
    mapping: str | None = Field(
        default=None,
        max_length=500_000,
        description="A mapping YAML to try instead of the source's current one (not saved).",
    )


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body cannot be read at all (not UTF-8 text)."},
    404: {"description": "No source with this id."},
    422: {"description": "A sample or the mapping is invalid; the error names the field."},
}


@router.post(
    "/sources/{source_id}/mapping/check",
    summary="Dry run: what the samples would become under the mapping; nothing is written",
    responses=RESPONSES,
)
async def mapping_check(
    source_id: SourceId, request: MappingCheckRequest, pool: PoolDep, settings: SettingsDep
) -> DryRunReport:
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        stored = await connection.fetchval("SELECT kind FROM sources WHERE id = $1", source_id)
        if stored is None:
            raise Rejection(
                404, "unknown_source", f"no source {source_id!r}", field="path.source_id"
            )
        kind = SourceKind(stored)
        mapping, origin = _mapping(kind, source_id, request.mapping, settings.mappings_dir)
        try:
            events = parse_samples(request.samples, kind, source_id, mapping)
        except SampleError as error:
            raise invalid_field(f"body.{error.field}", error.reason) from None
        report = check(events, mapping, source_id=source_id, kind=kind.value, origin=origin)
        await check_references(connection, report)
    return report


def _mapping(
    kind: SourceKind, source_id: str, text: str | None, overrides_dir: Any
) -> tuple[Mapping, str]:
    """The body's mapping (a 422 naming where it is wrong), else the transform's."""
    if text is None:
        return mapping_for(kind, source_id, overrides_dir), mapping_origin(
            kind, source_id, overrides_dir
        )
    try:
        document = parse_yaml(text, "body.mapping")
    except (ValueError, yaml.YAMLError, RecursionError) as error:
        raise invalid_field("body.mapping", f"not a YAML document: {error}"[:1000]) from None
    try:
        return Mapping.model_validate(document), "the request's mapping (not saved)"
    except ValidationError as error:
        raise invalid(
            field_problems(error.errors(include_input=False), prefix=["body", "mapping"])
        ) from None
