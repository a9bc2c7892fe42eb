"""The CRM model as data: entities, their typed columns, parent links and references.

The shipped model (``crm_model.yaml``) holds the entities every deployment has; a
deployment extends it with its own file (``PONTE_MODEL_FILE``): columns of its own on
those entities, and entities of its own, child entities nested under any entity at any
depth. Every part of Ponte reads the one registry this module builds (``crm_model()``):
the transform writes its tables, mappings are checked against its columns and types, the
read API and the ops page list and count its entities, deliver connectors map its
columns, and ``ponte migrate`` (``ponte.shared.crm_schema``) brings PostgreSQL to it.

Everything a set-based writer needs is known up front, per entity: the table, each
column's PostgreSQL type, the natural key ``(source_id, source_key)``, the parent link,
and every reference with the entity it points at. Entities are listed parents (and
referenced entities) first, so rows can be written in that order.

An extension may add, never change: a column or entity it redeclares differently is an
error naming the file, the line, the entity and the column, so an upgrade of the shipped
model and a deployment's file can never silently disagree about a type.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.dialects import postgresql as pg

from ponte.shared.config_files import ConfigError, located_problem, parse_yaml

ColumnType = Literal[
    "text",
    "integer",
    "bigint",
    "decimal",
    "date",
    "timestamptz",
    "boolean",
    "document",
    "email",
    "code",
    "reference",
]

CODE_ENTITY = "code"
"""The generic code table ("tabela de tabelas"): a ``code`` column points at it."""

_NAME = r"^[a-z][a-z0-9_]{0,62}$"

BOOKKEEPING_COLUMNS = frozenset(
    {
        "id",
        "source_id",
        "source_table",
        "source_key",
        "version_at",
        "version_event_id",
        "version_seq",
        "mapping_digest",
        "deleted_at",
        "extra",
        "updated_at",
    }
)
"""Columns every entity has; neither a model nor a mapping may declare them."""

VALUE_TYPES: dict[str, frozenset[str]] = {
    "text": frozenset({"text", "cnpj", "cpf", "document", "email"}),
    "document": frozenset({"document", "cnpj", "cpf", "text"}),
    "email": frozenset({"email", "text"}),
    "integer": frozenset({"integer"}),
    "bigint": frozenset({"integer"}),
    "decimal": frozenset({"decimal", "number", "integer"}),
    "date": frozenset({"date"}),
    "timestamptz": frozenset({"datetime"}),
    "boolean": frozenset({"boolean"}),
}
"""Per column type, the mapping value types (``ponte.shared.parsers.PARSERS``) that may be
written into it; the first-listed one is what a mapping reads by default."""

DEFAULT_VALUE_TYPE: dict[str, str] = {
    "text": "text",
    "document": "document",
    "email": "email",
    "integer": "integer",
    "bigint": "integer",
    "decimal": "decimal",
    "date": "date",
    "timestamptz": "datetime",
    "boolean": "boolean",
}


class ColumnDeclaration(BaseModel):
    """One column as a model file writes it: ``credit_limit: {type: decimal, precision:
    14, scale: 2}``, ``region_id: code``, ``company_id: {reference: company}``."""

    model_config = ConfigDict(extra="forbid")

    type: ColumnType = "text"
    precision: int | None = Field(default=None, ge=1, le=1000)
    scale: int | None = Field(default=None, ge=0, le=1000)
    reference: str | None = None
    index: bool = False
    derived: bool = False
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _reference_implies_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "reference" in data and "type" not in data:
            return {**data, "type": "reference"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ColumnDeclaration:
        if self.type == "reference" and self.reference is None:
            raise ValueError("a reference column names the entity: reference: <entity>")
        if self.type != "reference" and self.reference is not None:
            raise ValueError(f"reference: is for reference columns, not {self.type}")
        if self.type != "decimal" and (self.precision is not None or self.scale is not None):
            raise ValueError(f"precision and scale are for decimal columns, not {self.type}")
        if self.type == "decimal":
            precision = self.precision if self.precision is not None else 18
            scale = self.scale if self.scale is not None else 4
            if scale > precision:
                raise ValueError(f"scale {scale} is larger than precision {precision}")
        return self


class ParentDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str
    column: str | None = None
    """The child's column holding the parent row's id (default ``<parent>_id``)."""


class EntityDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str | None = Field(default=None, pattern=_NAME)
    description: str | None = None
    parent: ParentDeclaration | None = None
    columns: dict[str, ColumnType | ColumnDeclaration] = Field(default_factory=dict)


class ModelFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entities: dict[str, EntityDeclaration] = Field(default_factory=dict)


@dataclass(frozen=True)
class ColumnSpec:
    """A column of the model, resolved: its PostgreSQL type and what it points at."""

    name: str
    type: ColumnType
    precision: int | None = None
    scale: int | None = None
    references: str | None = None
    """The entity a ``code`` or ``reference`` column points at."""
    index: bool = False
    derived: bool = False

    @property
    def is_reference(self) -> bool:
        return self.references is not None

    @property
    def default_value_type(self) -> str | None:
        """The parser a mapping uses for this column when it names none (None: the column
        holds a row id, written only through a reference or code)."""
        return DEFAULT_VALUE_TYPE.get(self.type)

    def sa_type(self) -> sa.types.TypeEngine[Any]:
        match self.type:
            case "text" | "document" | "email":
                return sa.String()
            case "integer" | "code" | "reference":
                return sa.Integer()
            case "bigint":
                return sa.BigInteger()
            case "decimal":
                return sa.Numeric(self.precision or 18, self.scale if self.scale is not None else 4)
            case "date":
                return sa.Date()
            case "timestamptz":
                return sa.DateTime(timezone=True)
            case "boolean":
                return sa.Boolean()

    def describe(self) -> str:
        if self.type == "decimal":
            return f"decimal({self.precision},{self.scale})"
        if self.references is not None and self.type == "reference":
            return f"reference to {self.references}"
        return self.type


@dataclass(frozen=True)
class EntitySpec:
    name: str
    table: str
    columns: dict[str, ColumnSpec]
    parent: tuple[str, str] | None = None
    """(parent entity, the column holding the parent's id) for a child entity."""
    description: str | None = None

    @property
    def references(self) -> dict[str, str]:
        """Reference columns (foreign keys, codes included) -> the entity each points to."""
        return {c.name: c.references for c in self.columns.values() if c.references}

    @property
    def derived(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns.values() if c.derived)

    @property
    def mappable(self) -> frozenset[str]:
        """The columns a mapping may write."""
        return frozenset(c.name for c in self.columns.values() if not c.derived)

    @property
    def all_columns(self) -> frozenset[str]:
        return frozenset(self.columns) | BOOKKEEPING_COLUMNS


@dataclass
class CrmModel:
    """The registry: every entity, in write order (a row's parent and the rows it refers
    to are written first, self-references and cycles aside), and their SQLAlchemy tables."""

    entities: dict[str, EntitySpec]
    files: tuple[str, ...]
    metadata: sa.MetaData = field(default_factory=sa.MetaData)
    tables: dict[str, sa.Table] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for spec in self.entities.values():
            self.tables[spec.name] = _table(self.metadata, spec, self.entities)

    def __contains__(self, entity: object) -> bool:
        return entity in self.entities

    def entity(self, name: str) -> EntitySpec:
        return self.entities[name]

    def table(self, entity: str) -> sa.Table:
        return self.tables[entity]

    def table_name(self, entity: str) -> str:
        return self.entities[entity].table

    def references_of(self, entity: str) -> dict[str, str]:
        return self.entities[entity].references

    def parent_of(self, entity: str) -> tuple[str, str] | None:
        return self.entities[entity].parent

    def children_of(self, entity: str) -> list[tuple[str, str]]:
        """(child entity, the child's parent column) of every entity nested under this one."""
        return [
            (spec.name, spec.parent[1])
            for spec in self.entities.values()
            if spec.parent is not None and spec.parent[0] == entity
        ]

    def entity_of_table(self, table: str) -> str | None:
        return next((s.name for s in self.entities.values() if s.table == table), None)

    @property
    def digest(self) -> str:
        """A short hash of the resolved model: recorded by ``ponte migrate`` with the
        schema it applied, so a process started on another model is told so."""
        # The schema only: a description edited is not another model.
        schema = {
            name: {key: value for key, value in spec.items() if key != "description"}
            for name, spec in self.describe().items()
        }
        return hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The model as plain data (the transform's ``GET /model``)."""
        return {
            spec.name: {
                "table": spec.table,
                "description": spec.description,
                "parent": {"entity": spec.parent[0], "column": spec.parent[1]}
                if spec.parent
                else None,
                "columns": {
                    c.name: {
                        "type": c.type,
                        **(
                            {"precision": c.precision, "scale": c.scale}
                            if c.type == "decimal"
                            else {}
                        ),
                        **({"references": c.references} if c.references else {}),
                        **({"index": True} if c.index else {}),
                        **({"derived": True} if c.derived else {}),
                    }
                    for c in spec.columns.values()
                },
            }
            for spec in self.entities.values()
        }


def _table(metadata: sa.MetaData, spec: EntitySpec, entities: dict[str, EntitySpec]) -> sa.Table:
    """The entity's table: bookkeeping, natural key, then its own columns with real
    foreign keys (named by PostgreSQL's default, as the migrations that made the shipped
    tables left them)."""
    columns: list[sa.Column[Any]] = [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_id", sa.String(64), nullable=False),
        sa.Column("source_table", sa.String, nullable=False),
        sa.Column("source_key", sa.String, nullable=False),
        sa.Column("version_at", sa.DateTime(timezone=True)),
        sa.Column("version_event_id", sa.String),
        # The version's sequence (``ponte.shared.versions``; migration 0015).
        sa.Column("version_seq", sa.BigInteger),
        # The digest of the mapping that wrote the row (``Mapping.digest``; migration
        # 0016): a reprocess rewrites a row of an equal version only when it differs.
        sa.Column("mapping_digest", sa.String),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("extra", pg.JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    ]
    for column in spec.columns.values():
        args: list[Any] = []
        if column.references is not None:
            args.append(sa.ForeignKey(f"{entities[column.references].table}.id"))
        columns.append(sa.Column(column.name, column.sa_type(), *args, index=column.index))
    return sa.Table(
        spec.table,
        metadata,
        *columns,
        sa.UniqueConstraint("source_id", "source_key", name=f"uq_{spec.table}_source_key"),
    )


# --- loading -------------------------------------------------------------------------------


def _declared_column(name: str, declared: ColumnType | ColumnDeclaration) -> ColumnSpec:
    if isinstance(declared, str):
        declared = ColumnDeclaration(type=declared)
    precision = scale = None
    if declared.type == "decimal":
        precision = declared.precision if declared.precision is not None else 18
        scale = declared.scale if declared.scale is not None else 4
    references = CODE_ENTITY if declared.type == "code" else declared.reference
    return ColumnSpec(
        name=name,
        type=declared.type,
        precision=precision,
        scale=scale,
        references=references,
        index=declared.index,
        derived=declared.derived,
    )


@dataclass
class _Draft:
    """An entity being assembled from the files that declare it."""

    table: str
    description: str | None
    parent: ParentDeclaration | None
    columns: dict[str, ColumnSpec]
    where: dict[str, tuple[str, str, tuple[str | int, ...]]]
    """column -> (file name, file text, path in it), for errors found after merging."""
    origin: tuple[str, str, tuple[str | int, ...]]


def _merge(drafts: dict[str, _Draft], document: ModelFile, name: str, text: str) -> None:
    """Add one file's declarations: new entities, and new columns on known ones."""
    for entity, declared in document.entities.items():
        path: tuple[str | int, ...] = ("entities", entity)
        if not _valid_name(entity):
            raise ConfigError(
                name, text, path, "an entity name is lower-case letters, digits and _"
            )
        draft = drafts.get(entity)
        if draft is None:
            draft = drafts[entity] = _Draft(
                declared.table or _plural(entity),
                declared.description,
                declared.parent,
                {},
                {},
                (name, text, path),
            )
        else:
            for attribute in ("table", "parent"):
                if getattr(declared, attribute) is not None:
                    raise ConfigError(
                        name,
                        text,
                        (*path, attribute),
                        f"entity {entity!r} is already in the model (from {draft.origin[0]}); "
                        f"an extension may add columns to it, not change its {attribute}",
                    )
        for column, spec in declared.columns.items():
            column_path = (*path, "columns", column)
            if not _valid_name(column):
                raise ConfigError(
                    name, text, column_path, "a column name is lower-case letters, digits and _"
                )
            if column in BOOKKEEPING_COLUMNS:
                raise ConfigError(
                    name, text, column_path, f"{column!r} is a bookkeeping column every entity has"
                )
            resolved = _declared_column(column, spec)
            known = draft.columns.get(column)
            if known is not None and known != resolved:
                raise ConfigError(
                    name,
                    text,
                    column_path,
                    f"entity {entity!r} already has column {column!r} as {known.describe()} "
                    f"(from {draft.where[column][0]}); an extension may add columns, "
                    "not change them",
                )
            draft.columns[column] = resolved
            draft.where[column] = (name, text, column_path)


def _valid_name(name: str) -> bool:
    return re.fullmatch(_NAME, name) is not None


def _plural(entity: str) -> str:
    return f"{entity[:-1]}ies" if entity.endswith("y") else f"{entity}s"


def _resolve(drafts: dict[str, _Draft]) -> dict[str, EntitySpec]:
    """Check references and parents across every file, add parent columns left implicit,
    and order the entities parents and referenced entities first."""
    tables: dict[str, str] = {}
    for entity, draft in drafts.items():
        if draft.table in tables:
            name, text, path = draft.origin
            raise ConfigError(
                name, text, (*path, "table"),
                f"table {draft.table!r} is already entity {tables[draft.table]!r}'s",
            )  # fmt: skip
        tables[draft.table] = entity
    specs: dict[str, EntitySpec] = {}
    for entity, draft in drafts.items():
        for column, spec in draft.columns.items():
            if spec.references is not None and spec.references not in drafts:
                name, text, path = draft.where[column]
                raise ConfigError(
                    name, text, path,
                    f"refers to entity {spec.references!r}, which is not in the model "
                    f"(entities: {', '.join(sorted(drafts))})",
                )  # fmt: skip
        parent: tuple[str, str] | None = None
        if draft.parent is not None:
            name, text, path = draft.origin
            if draft.parent.entity not in drafts:
                raise ConfigError(
                    name, text, (*path, "parent", "entity"),
                    f"parent entity {draft.parent.entity!r} is not in the model",
                )  # fmt: skip
            if draft.parent.entity == entity:
                raise ConfigError(
                    name, text, (*path, "parent"), "an entity cannot be its own parent"
                )
            column = draft.parent.column or f"{draft.parent.entity}_id"
            declared = draft.columns.get(column)
            if declared is None:
                draft.columns[column] = ColumnSpec(
                    column, "reference", references=draft.parent.entity, index=True
                )
            elif declared.references != draft.parent.entity or declared.type != "reference":
                raise ConfigError(
                    name, text, (*path, "parent", "column"),
                    f"parent column {column!r} must be a reference to {draft.parent.entity!r} "
                    f"(it is declared as {declared.describe()})",
                )  # fmt: skip
            parent = (draft.parent.entity, column)
        specs[entity] = EntitySpec(
            entity, draft.table, dict(draft.columns), parent, draft.description
        )
    _check_parent_cycles(specs, drafts)
    return {name: specs[name] for name in _write_order(specs)}


def _check_parent_cycles(specs: dict[str, EntitySpec], drafts: dict[str, _Draft]) -> None:
    for entity in specs:
        seen = [entity]
        current = specs[entity].parent
        while current is not None:
            if current[0] in seen:
                name, text, path = drafts[entity].origin
                chain = " > ".join([*seen, current[0]])
                raise ConfigError(name, text, (*path, "parent"), f"parents form a cycle: {chain}")
            seen.append(current[0])
            current = specs[current[0]].parent


def _write_order(specs: dict[str, EntitySpec]) -> list[str]:
    """Declaration order, moved so that each entity comes after its parent and the
    entities it refers to (a depth-first topological sort; a cycle of references is
    broken where it closes: the reference that closes it is parked and resolved at the
    end of the batch, as a self-reference is)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(entity: str) -> None:
        if entity in order or entity in visiting:
            return
        visiting.add(entity)
        spec = specs[entity]
        targets = [spec.parent[0]] if spec.parent else []
        targets += [t for t in spec.references.values() if t != entity]
        for target in targets:
            visit(target)
        visiting.discard(entity)
        order.append(entity)

    for entity in specs:
        visit(entity)
    return order


def _read(document: Any, name: str, text: str) -> ModelFile:
    try:
        return ModelFile.model_validate(document or {})
    except ValidationError as error:
        loc, reason = located_problem(error.errors(), frozenset({"ColumnDeclaration"}))
        raise ConfigError(name, text, loc, reason) from None


def build_model(files: list[tuple[str, str]]) -> CrmModel:
    """The registry from model files, in order: (name for errors, YAML text). The first is
    the shipped model; later ones extend it."""
    drafts: dict[str, _Draft] = {}
    for name, text in files:
        _merge(drafts, _read(parse_yaml(text, name), name, text), name, text)
    return CrmModel(_resolve(drafts), tuple(name for name, _ in files))


SHIPPED_MODEL = "ponte/shared/crm_model.yaml"


def shipped_model_text() -> str:
    return (resources.files("ponte.shared") / "crm_model.yaml").read_text(encoding="utf-8")


@cache
def load_model(extension: Path | None = None) -> CrmModel:
    """The shipped model, extended by ``extension`` (a deployment's model file)."""
    files = [(SHIPPED_MODEL, shipped_model_text())]
    if extension is not None:
        files.append((str(extension), extension.read_text(encoding="utf-8")))
    return build_model(files)


def crm_model() -> CrmModel:
    """This process's model: the shipped one extended by ``PONTE_MODEL_FILE`` when set
    (settings.model_file reads the same variable). Read from the environment rather than
    passed around because every layer needs it and a process runs on one model."""
    extension = os.environ.get("PONTE_MODEL_FILE")
    return load_model(Path(extension) if extension else None)
