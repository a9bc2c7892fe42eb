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
    ativo: {column: active, type: boolean, values: {S: true, N: false}}   # a value map
    status: {column: currency, values: {"1": BRL}, unknown: default, default: BRL}
    uf: {column: state, default: SP, case: upper}         # when absent or empty; case
    razao: {column: legal_name, required: true}           # refuse the row without it
    total: {column: total, type: decimal, number_format: us}   # br | us | plain
    emissao: {column: issued_at, type: datetime, date_format: "%d.%m.%Y"}

Columns computed from several fields, per table::

    computed:
      name: {template: "{nome} {sobrenome}"}                        # concatenation
      active: {type: boolean, true_when: {field: situacao, in: [A, L]}}

A ``$code`` object (``{"$code": {"tabela": ..., "chave": ...}}``) is accepted for any
field declared as a code; sent to any other column it stores the code's key there
(``on_code: key``, the default) or refuses the row (``on_code: refuse``). A code table's
parent (``chave_pai``) may be a plain key or a ``$code`` naming the parent's own list.
A reference whose target has not arrived is parked
(``on_missing: park``, the default) or creates a placeholder row (``stub``).

Two versions of a row with the same time are ordered by the source's own sequence when a
table names it (``version: {field: rowversion}``: an integer, decimal text or ``0x`` hex,
required on every row; a child table and its parent both name one, or neither), else by
the raw topic offset (``ponte.transform.normalize.Version``).

Mappings are validated at load against the CRM model: unknown entities or columns, and
references to entities that do not exist, are errors naming the table and field.
"""

from __future__ import annotations

import re
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
from ponte.shared.parsers import (
    NUMBER_PARSERS,
    PARSERS,
    NumberFormat,
    ParseError,
    as_integer,
    parse_with_format,
)
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


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


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
    default: Any = None
    """Written when the field is absent or empty, read like a value the ERP sent."""
    required: bool = False
    """Refuse the row when the field is absent or empty (after ``default``)."""
    values: dict[str, Any] | None = None
    """A value map applied before the type is read (``{S: true, N: false}``, the ERP's
    status codes to the CRM's); keys are compared as trimmed text."""
    unknown: Literal["refuse", "keep", "default"] = "refuse"
    """A value ``values`` does not list: refuse the row, keep it as sent, or write
    ``default``."""
    case: Literal["upper", "lower"] | None = None
    number_format: NumberFormat | None = None
    """``br``, ``us`` or ``plain`` (``parsers.NumberFormat``), for decimal and integer
    columns: whether ``1.234`` is one thousand two hundred thirty-four or not."""
    date_format: str | None = None
    """A ``strftime`` format (``%d.%m.%Y``) for date and datetime columns."""

    @property
    def is_code(self) -> bool:
        return self.code is not None

    def convert(self, value: Any) -> Any:
        """The column's value from what the ERP sent: the value map, the case, then the
        column's type read in the field's own number or date format. Raises
        ``ParseError`` naming what is wrong (the caller adds table and field)."""
        if self.values is not None and not _blank(value):
            text = str(value).strip()
            if text in self.values:
                value = self.values[text]
            elif self.unknown == "refuse":
                raise ParseError(f"{text!r} is not one of the mapped values {sorted(self.values)}")
            elif self.unknown == "default":
                value = self.default
        if self.case is not None and isinstance(value, str):
            value = value.upper() if self.case == "upper" else value.lower()
        if self.number_format is not None:
            number = NUMBER_PARSERS[self.number_format](value)
            return as_integer(number, value) if self.type == "integer" else number
        if self.date_format is not None:
            return parse_with_format(value, self.date_format, with_time=self.type == "datetime")
        return PARSERS[self.type](value)

    @model_validator(mode="after")
    def _expressions_fit_the_type(self) -> FieldMapping:
        if self.number_format is not None and self.type not in ("decimal", "integer", "number"):
            raise ValueError(f"number_format is for decimal or integer columns, not {self.type}")
        if self.date_format is not None:
            if self.type not in ("date", "datetime"):
                raise ValueError(f"date_format is for date or datetime columns, not {self.type}")
            if "%" not in self.date_format:
                raise ValueError(f"date_format {self.date_format!r} has no % directive")
        if self.unknown == "default" and self.default is None:
            raise ValueError("unknown: default needs a default")
        if (self.values is not None or self.default is not None) and (
            self.reference is not None or self.code is not None
        ):
            raise ValueError("values and default are for plain columns, not references or codes")
        return self


class ParentMapping(BaseModel):
    """How a child table hangs from its parent."""

    model_config = ConfigDict(extra="forbid")

    entity: str
    column: str
    field: str | None = None
    """The field holding the parent's ERP key when the child arrives as its own event."""


class VersionSequence(BaseModel):
    """The field of a table's rows that orders two versions with the same time: a
    per-source monotonic number (a ``rowversion``, a change counter, milliseconds), read
    as an integer and required on every row and delete of the table. Without one, the
    raw topic offset orders them (``ponte.transform.normalize.Version``)."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(min_length=1)


class CodeTableFields(BaseModel):
    """Field names of a generic code table ("tabela de tabelas")."""

    model_config = ConfigDict(extra="forbid")

    list: str = "tabela"
    key: str = "chave"
    description: str = "descricao"
    parent_key: str = "chave_pai"
    parent_list: str = "tabela_pai"


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class TrueWhen(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    field: str
    in_: list[str] = Field(alias="in", min_length=1)


class Computed(BaseModel):
    """A column computed from the row's fields rather than copied from one:
    ``template: "{nome} {sobrenome}"`` (absent or empty fields leave their place empty,
    spaces are folded; all empty writes NULL), or ``true_when: {field: situacao, in:
    [A, L]}`` (true when the field's trimmed text is one of the values, else false), then
    read as ``type``."""

    model_config = ConfigDict(extra="forbid")

    type: ValueType = "text"
    template: str | None = None
    true_when: TrueWhen | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> Computed:
        if (self.template is None) == (self.true_when is None):
            raise ValueError("give exactly one of template and true_when")
        if self.template is not None and not _PLACEHOLDER.search(self.template):
            raise ValueError(f"template {self.template!r} names no {{field}}")
        return self

    def fields(self) -> list[str]:
        if self.template is not None:
            return _PLACEHOLDER.findall(self.template)
        assert self.true_when is not None
        return [self.true_when.field]

    def compute(self, data: dict[str, Any]) -> Any:
        if self.true_when is not None:
            value = data.get(self.true_when.field)
            text = "" if value is None or isinstance(value, dict | list) else str(value).strip()
            return PARSERS[self.type](text in self.true_when.in_)
        assert self.template is not None

        def part(match: re.Match[str]) -> str:
            value = data.get(match.group(1))
            if value is None or isinstance(value, dict | list):
                return ""
            return str(value).strip()

        text = " ".join(_PLACEHOLDER.sub(part, self.template).split())
        return PARSERS[self.type](text or None)


class TableMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str
    key: list[str] = Field(min_length=1)
    fields: dict[str, str | FieldMapping] = Field(default_factory=dict)
    computed: dict[str, Computed] = Field(default_factory=dict)
    """Column -> how it is computed from the row's fields (``Computed``)."""
    parent: ParentMapping | None = None
    code_table: CodeTableFields | None = None
    """Set for the generic code table: its rows become ``codes``."""
    version: VersionSequence | None = None
    """``version: {field: rowversion}``: the source's own sequence (``VersionSequence``)."""

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
        return frozenset(written | set(self.computed))

    @cached_property
    def computed_from(self) -> frozenset[str]:
        """The fields computed columns read: known to the mapping, so not ``extra``."""
        return frozenset(name for rule in self.computed.values() for name in rule.fields())

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
                _check_same_sequence(where, table, self.tables)
                order = list(ENTITIES)
                if order.index(table.parent.entity) >= order.index(table.entity):
                    raise ValueError(
                        f"{where}: a parent entity must come before its child in "
                        "ponte.shared.crm.ENTITIES (rows are applied in that order)"
                    )
            mapped = {
                spec.column
                for name in table.fields
                if (spec := table.field(name)) is not None and not spec.ignore
            }
            for column in table.computed:
                _check_column(f"{where} computed {column!r}", column, columns)
                if column in mapped:
                    raise ValueError(
                        f"{where} computed {column!r}: the column is also mapped from a field"
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
                if spec.default is not None:
                    try:
                        spec.convert(spec.default)
                    except ParseError as error:
                        raise ValueError(f"{field_where}: default {error}") from None
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


def _check_same_sequence(where: str, child: TableMapping, tables: dict[str, TableMapping]) -> None:
    """A child sent alone is compared with its parent's version (the set that last replaced
    the parent's children): both must order by the same kind of sequence, the source's
    or the raw topic offset, or a rowversion would be compared with an offset."""
    assert child.parent is not None
    for name, parent in tables.items():
        if parent.entity != child.parent.entity or parent.code_table is not None:
            continue
        if parent.version is not None and child.version is None:
            raise ValueError(
                f"{where} version: its parent table {name!r} names a version sequence "
                "(version.field) and this table does not; give both one, or neither"
            )
        if parent.version is None and child.version is not None:
            raise ValueError(
                f"{where} version: this table names a version sequence (version.field) and "
                f"its parent table {name!r} does not; give both one, or neither"
            )


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
