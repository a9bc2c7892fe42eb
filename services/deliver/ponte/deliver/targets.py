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

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ponte.shared.crm_model import crm_model


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: int = Field(gt=0)
    per_seconds: float = Field(gt=0)


class Reference(BaseModel):
    """Where the referenced record's id *in this CRM* goes, and as what JSON type."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1)
    """The target property (a dotted path for connectors that build nested JSON)."""
    type: Literal["string", "integer"] = "string"
    """How the CRM wants the id: ``"5001"`` or ``5001``."""


class ObjectMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object_type: str
    properties: dict[str, str] = Field(default_factory=dict)
    """CRM-model column -> target property. Reference columns (``company_id``) are refused
    here: their values are Ponte's row ids; see ``references``."""
    references: dict[str, Reference] = Field(default_factory=dict)
    """Reference column -> the property that gets the referenced record's id in this CRM
    (``company_id: account`` or ``company_id: {to: org_id, type: integer}``), resolved
    from ``deliveries`` by ``ponte.deliver.references``; a change whose referenced record
    has no CRM id yet waits (``deliveries.state = 'waiting'``) until it has one."""

    @field_validator("references", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                column: {"to": ref} if isinstance(ref, str) else ref
                for column, ref in value.items()
            }
        return value

    def values_for(self, row: dict[str, Any]) -> dict[str, Any]:
        """The target's properties from a change's row. Kinds with property expressions
        (``kind: rest``) override this; their refusal is a ``ValueError`` naming the
        property, which deliver turns into a refused (dead-lettered) record."""
        return {prop: row.get(column) for column, prop in self.properties.items()}

    def sent_properties(self) -> set[str]:
        """Every target property this mapping writes (plain and reference)."""
        return set(self.properties.values()) | {ref.to for ref in self.references.values()}

    associations: dict[str, str] = Field(default_factory=dict)
    """Foreign-key column -> the CRM-model entity it points to (``company_id: company``):
    the record is linked to that entity's record in the CRM (``ponte.deliver.associations``
    checks the column really is such a key)."""


class Target(BaseModel):
    """What every target kind shares; a kind's own model subclasses this."""

    # Errors name the field but never echo the input: it may hold a token or a key.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

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
            model = crm_model()
            if entity not in model:
                raise ValueError(f"objects: unknown entity {entity!r}")
            columns = set(model.entity(entity).all_columns)
            references = model.references_of(entity)
            for column, prop in mapping.properties.items():
                where = f"objects.{entity}.properties.{column}"
                if column not in columns:
                    raise ValueError(f"objects.{entity}: {column!r} is not a column of {entity}")
                if column == "id":
                    raise ValueError(
                        f"{where}: 'id' is Ponte's own row id, meaningless to the CRM (and it "
                        "may equal the id of an unrelated record there); a record is "
                        "identified in the CRM by Ponte's external id or a natural_key"
                    )
                if column in references:
                    to = references[column]
                    raise ValueError(
                        f"{where}: {column!r} holds Ponte's own row id of a {to}, not that "
                        f"{to}'s id in the CRM, so the record would point at whichever CRM "
                        f"record has that number. Send the {to}'s CRM id with "
                        f"'references: {{{column}: {prop}}}' (the change waits until the {to} "
                        f"is delivered), or link the records with "
                        f"'associations: {{{column}: {to}}}'"
                    )
            for column, reference in mapping.references.items():
                where = f"objects.{entity}.references.{column}"
                if column not in references:
                    raise ValueError(
                        f"{where}: {column!r} is not a reference column of {entity} "
                        f"(its reference columns: {', '.join(sorted(references)) or 'none'})"
                    )
                to = references[column]
                if to not in objects:
                    raise ValueError(
                        f"{where}: {column!r} refers to a {to}, and {to!r} is not among this "
                        f"target's objects, so it never gets a CRM id to send"
                    )
                if reference.to in mapping.properties.values():
                    raise ValueError(f"{where}: {reference.to!r} is also mapped in properties")
            _check_associations(entity, mapping, objects)
        return objects

    def wants(self, source_id: str, entity: str) -> bool:
        return entity in self.objects and (not self.sources or source_id in self.sources)


def _check_associations(
    entity: str, mapping: ObjectMapping, objects: dict[str, ObjectMapping]
) -> None:
    """Each declared link is a reference column of the entity to the named entity, and
    that entity is delivered by the same target (else the link could never complete)."""
    model = crm_model()
    columns = set(model.entity(entity).all_columns)
    references = model.references_of(entity)
    for column, to_entity in mapping.associations.items():
        where = f"objects.{entity}.associations.{column}"
        if to_entity not in model:
            raise ValueError(f"{where}: unknown entity {to_entity!r}")
        if column not in columns:
            raise ValueError(f"{where}: {column!r} is not a column of {entity}")
        if references.get(column) != to_entity:
            wanted = model.table_name(to_entity)
            pointed = references.get(column)
            actual = model.table_name(pointed) if pointed else "nothing"
            raise ValueError(
                f"{where}: {column!r} is not a foreign key to {to_entity} ({wanted}); "
                f"it points to {actual}"
            )
        if to_entity not in objects:
            raise ValueError(
                f"{where}: {to_entity!r} is not among this target's objects, "
                "so there is nothing to link to"
            )
