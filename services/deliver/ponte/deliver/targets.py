"""CRM targets: where committed changes go, declared in YAML.

Every target has the fields below; each kind (``hubspot``, ...) adds its own (credentials,
lookup rules) in its connector module, and ``connectors.TARGET_KINDS`` lists the kinds.

```yaml
targets:
  - id: hubspot-main
    kind: hubspot
    base_url: https://api.hubapi.com
    token: ${HUBSPOT_TOKEN}          # from the environment / a Kubernetes Secret
    sources: [erp-matriz]            # empty: every source
    rate_limit: {requests: 100, per_seconds: 10}   # HubSpot's documented limit by tier
    concurrency: 4
    objects:
      company: {object_type: companies, properties: {legal_name: name, document: cnpj}}
```

Each ``objects`` entry maps a CRM-model entity to the target's object type and a column to
property map; ``id_property`` is the target's unique property holding Ponte's external id
(``<source>/<entity>/<key>``), so an upsert by it never duplicates a record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ponte.shared.config_files import load_entries
from ponte.shared.crm import ENTITIES


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: int = Field(gt=0)
    per_seconds: float = Field(gt=0)


class ObjectMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object_type: str
    properties: dict[str, str] = Field(default_factory=dict)
    """CRM-model column -> target property."""
    associations: dict[str, str] = Field(default_factory=dict)
    """Foreign-key column -> the CRM-model entity it points to (``company_id: company``):
    the record is linked to that entity's record in the CRM (``ponte.deliver.associations``
    checks the column really is such a key)."""


class Target(BaseModel):
    """What every target kind shares; a kind's own model subclasses this."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    kind: str
    base_url: str
    sources: list[str] = Field(default_factory=list)
    rate_limit: RateLimit = RateLimit(requests=100, per_seconds=10)
    concurrency: int = Field(default=4, gt=0)
    batch_size: int = Field(default=100, gt=0, le=100)
    objects: dict[str, ObjectMapping]

    @field_validator("objects")
    @classmethod
    def _known_entities(cls, objects: dict[str, ObjectMapping]) -> dict[str, ObjectMapping]:
        for entity, mapping in objects.items():
            if entity not in ENTITIES:
                raise ValueError(f"objects: unknown entity {entity!r}")
            columns = set(ENTITIES[entity].model_fields)
            for column in mapping.properties:
                if column not in columns:
                    raise ValueError(f"objects.{entity}: {column!r} is not a column of {entity}")
        return objects

    def wants(self, source_id: str, entity: str) -> bool:
        return entity in self.objects and (not self.sources or source_id in self.sources)


def parse_target(entry: dict[str, Any]) -> Target:
    """One target entry as its kind's model; an unknown kind is an error naming the kinds."""
    from ponte.deliver.connectors import TARGET_KINDS  # the kinds import this module

    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind not in TARGET_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(TARGET_KINDS)}")
    return TARGET_KINDS[kind].model.model_validate(entry)


def load_targets(path: Path) -> list[Target]:
    targets = []
    for index, entry in enumerate(load_entries(path, "targets")):
        try:
            targets.append(parse_target(entry))
        except ValueError as error:
            name = entry.get("id", "?") if isinstance(entry, dict) else "?"
            raise ValueError(f"{path}: targets[{index}] ({name}): {error}") from None
    return targets
