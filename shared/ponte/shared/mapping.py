"""Mapping files: which source table and field goes to which CRM entity and column.

A new ERP is a new mapping file, not code. Each source kind ships a default
(``mappings/erp.yaml`` for the tables seed 001 lists, ``shopify.yaml``,
``woocommerce.yaml``); ``PONTE_MAPPINGS_DIR`` (settings.mappings_dir) points at a
directory of overrides named ``<kind>.yaml`` or ``<source_id>.yaml`` (a source's own file
wins).

A field is written one of these ways::

    razao_social: legal_name                              # text column
    cnpj: {column: document, type: document}              # typed column (parsers.PARSERS)
    empresa: {reference: company, column: company_id}     # the ERP key of another entity
    produto: {reference: product, column: product_id, on_missing: stub}
    situacao: {code: SIT_PEDIDO, column: status_id}       # a code in a code list
    observacao: {ignore: true}                            # known, deliberately not stored

A ``$code`` object (``{"$code": {"tabela": ..., "chave": ...}}``) is accepted for any
field declared as a code; sent to any other column it stores the code's key there
(``on_code: key``, the default) or refuses the row (``on_code: refuse``). A code table's
parent (``chave_pai``) may be a plain key or a ``$code`` naming the parent's own list.
A reference whose target has not arrived is parked
(``on_missing: park``, the default) or creates a placeholder row (``stub``).

Mappings are validated at load against the CRM model: unknown entities or columns, and
references to entities that do not exist, are errors naming the table and field.
"""

from __future__ import annotations

from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlmodel import SQLModel

from ponte.shared.config_files import load_yaml, parse_yaml
from ponte.shared.crm import BOOKKEEPING_COLUMNS, DERIVED_COLUMNS, ENTITIES
from ponte.shared.parsers import PARSERS
from ponte.shared.source_kinds import SourceKind, spec_of

ValueType = Literal[
    "text",
    "integer",
    "decimal",
    "number",
    "date",
    "datetime",
    "boolean",
    "cnpj",
    "cpf",
    "document",
    "email",
]


class FieldMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str | None = None
    type: ValueType = "text"
    reference: str | None = None
    """Target entity: the value is that entity's ERP key."""
    code: str | None = None
    """Code list: the value is a code in it (or a ``$code`` object naming the list)."""
    on_missing: Literal["park", "stub"] = "park"
    on_code: Literal["key", "refuse"] = "key"
    """A ``$code`` object sent to a field that is not a code: store the code's key in
    the column (``key``, parsed as the column's type), or refuse the row (``refuse``)."""
    ignore: bool = False

    @property
    def is_code(self) -> bool:
        return self.code is not None


class ParentMapping(BaseModel):
    """How a child table hangs from its parent."""

    model_config = ConfigDict(extra="forbid")

    entity: str
    column: str
    field: str | None = None
    """The field holding the parent's ERP key when the child arrives as its own event."""


class CodeTableFields(BaseModel):
    """Field names of a generic code table ("tabela de tabelas")."""

    model_config = ConfigDict(extra="forbid")

    list: str = "tabela"
    key: str = "chave"
    description: str = "descricao"
    parent_key: str = "chave_pai"
    parent_list: str = "tabela_pai"


class TableMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str
    key: list[str] = Field(min_length=1)
    fields: dict[str, str | FieldMapping] = Field(default_factory=dict)
    parent: ParentMapping | None = None
    code_table: CodeTableFields | None = None
    """Set for the generic code table: its rows become ``codes``."""

    @field_validator("fields", mode="after")
    @classmethod
    def _expand_short_form(
        cls, fields: dict[str, str | FieldMapping]
    ) -> dict[str, str | FieldMapping]:
        """``razao_social: legal_name`` is ``{column: legal_name}``; expanded once here."""
        return {
            name: FieldMapping(column=spec) if isinstance(spec, str) else spec
            for name, spec in fields.items()
        }

    @cached_property
    def columns(self) -> frozenset[str]:
        """Every column this table writes (its fields, and its parent link)."""
        written = {
            spec.column
            for name in self.fields
            if (spec := self.field(name)) is not None and spec.column and not spec.ignore
        }
        if self.parent is not None:
            written.add(self.parent.column)
        return frozenset(written)

    def field(self, name: str) -> FieldMapping | None:
        spec = self.fields.get(name)
        return FieldMapping(column=spec) if isinstance(spec, str) else spec


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    tables: dict[str, TableMapping]

    @model_validator(mode="after")
    def _matches_crm_model(self) -> Mapping:
        for table_name, table in self.tables.items():
            where = f"table {table_name!r}"
            model = ENTITIES.get(table.entity)
            if model is None:
                raise ValueError(f"{where}: unknown entity {table.entity!r}")
            columns = (
                set(model.model_fields)
                - BOOKKEEPING_COLUMNS
                - DERIVED_COLUMNS.get(table.entity, frozenset())
            )
            if table.parent is not None:
                _check_column(f"{where} parent", table.parent.column, columns)
                if table.parent.entity not in ENTITIES:
                    raise ValueError(f"{where} parent: unknown entity {table.parent.entity!r}")
                _check_foreign_key(
                    f"{where} parent", table.entity, table.parent.column, table.parent.entity
                )
                order = list(ENTITIES)
                if order.index(table.parent.entity) >= order.index(table.entity):
                    raise ValueError(
                        f"{where}: a parent entity must come before its child in "
                        "ponte.shared.crm.ENTITIES (rows are applied in that order)"
                    )
            for field_name in table.fields:
                spec = table.field(field_name)
                assert spec is not None
                if spec.ignore:
                    continue
                field_where = f"{where} field {field_name!r}"
                if spec.column is None:
                    raise ValueError(f"{field_where}: no column")
                _check_column(field_where, spec.column, columns)
                if spec.reference is not None and spec.reference not in ENTITIES:
                    raise ValueError(f"{field_where}: unknown entity {spec.reference!r}")
                target = "code" if spec.is_code else spec.reference
                if target is not None:
                    _check_foreign_key(field_where, table.entity, spec.column, target)
        return self

    def record_key_fields(self) -> dict[str, list[str]]:
        """Per table, the fields that identify a record as the transform keys it (a child's
        parent field first): ingest keys Kafka messages by them, so every event of one
        record, child tables sent on their own included, stays in one partition."""
        return {
            name: ([table.parent.field] if table.parent and table.parent.field else []) + table.key
            for name, table in self.tables.items()
            if not table.code_table
        }

    def table(self, name: str) -> TableMapping | None:
        found = self.tables.get(name)
        if found is not None:
            return found
        folded = name.strip().casefold()
        for table_name, table in self.tables.items():
            if table_name.casefold() == folded:
                return table
        return None


def _check_column(where: str, column: str, columns: set[str]) -> None:
    if column not in columns:
        raise ValueError(
            f"{where}: column {column!r} is not in the entity (known: {', '.join(sorted(columns))})"
        )


def _check_foreign_key(where: str, entity: str, column: str, target: str) -> None:
    """A reference column must be a foreign key to the referenced entity's table."""
    table = SQLModel.metadata.tables[str(ENTITIES[entity].__tablename__)]
    targets = {key.column.table.name for key in table.c[column].foreign_keys}
    wanted = str(ENTITIES[target].__tablename__)
    if wanted not in targets:
        raise ValueError(
            f"{where}: column {column!r} does not refer to {target!r} "
            f"(it refers to {', '.join(sorted(targets)) or 'nothing'})"
        )


def load_mapping(path: Path) -> Mapping:
    document: Any = load_yaml(path)
    try:
        return Mapping.model_validate(document)
    except ValidationError as error:
        raise ValueError(f"{path}: {error}") from None


@cache
def default_mapping(kind: str) -> Mapping:
    text = (resources.files("ponte.shared") / "mappings" / f"{kind}.yaml").read_text(
        encoding="utf-8"
    )
    return Mapping.model_validate(parse_yaml(text, f"ponte/shared/mappings/{kind}.yaml"))


def mapping_for(kind: SourceKind, source_id: str, overrides_dir: Path | None = None) -> Mapping:
    """The source's own mapping file, else its kind's override, else the shipped default."""
    if overrides_dir is not None:
        for name in (f"{source_id}.yaml", f"{kind.value}.yaml"):
            if (overrides_dir / name).exists():
                return load_mapping(overrides_dir / name)
    return default_mapping(spec_of(kind).default_mapping)


assert set(PARSERS) == set(get_args(ValueType)), "ValueType and PARSERS must list the same types"
