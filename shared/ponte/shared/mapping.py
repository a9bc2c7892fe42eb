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
(``on_code: key``, the default), the code's description (``on_code: description``, a
text column: the description known when the row is written, else the key), or refuses
the row (``on_code: refuse``). A code table's
parent (``chave_pai``) may be a plain key or a ``$code`` naming the parent's own list.
A reference whose target has not arrived is parked
(``on_missing: park``, the default) or creates a placeholder row (``stub``). A reference
may name its target by another field of it, and in another source::

    cnpj: {reference: company, column: company_id, by: document, type: document,
           source: erp-main}
    email: {reference: contact, column: contact_id, by: email}

(read as ``type`` says, else as the target column's model type: read it the way the
target's own mapping stored it, a CNPJ's digits; resolved only when exactly one live row
of that source has the value: none or several park it, with the reason). A parked
reference older than ``parked_reference_expiry_s`` is dead-lettered with its context
instead of waiting forever.

Rows a source sends but the CRM must not hold (internal customers, rows without a
document) are filtered per table with ``skip``; a row matching any rule is skipped::

    skip:
      - {field: tipo, in: [I, X], reason: "internal customers"}   # trimmed text is one of
      - {field: status, not_in: [A, L]}                           # ... is none of (absent: "")
      - {field: cnpj, empty: true}                                 # absent, null or blank

Values are compared as trimmed text (a number ``1`` matches ``"1"``); an object or list
never matches ``in`` and is not ``empty``. Rules apply to upserts only: a delete names
just the key, so a rule on another field would misread it (deleting a row never stored
changes nothing anyway). A skipped row is never silently dropped: it is counted
(``ponte_transform_rows_skipped_total{source,table,rule}``) and recorded per source,
table and rule (``skipped_rows``, ``GET /skipped-rows`` on the transform). What skipping
means:

- a **root row** (the event's own table): the record is not stored and nothing is
  written, nor removed: a row stored before the rule existed stays as it is (a filter is
  not a delete; the source's delete is);
- a **child row** (nested in its parent): it is left out of the parent's child set, and
  children are a set, so a child of that key stored by an earlier version is tombstoned
  (delete change event) like any child the parent no longer carries.

The fields a rule reads are known to the mapping, so they are not reported as unmapped.
``ponte mapping check <source_id> --sample FILE`` runs a mapping over sample deliveries
without writing anything (``ponte.transform.dry_run``).

Two versions of a row with the same time are ordered by the source's own sequence when a
table names it (``version: {field: rowversion}``: an integer, decimal text or ``0x`` hex,
required on every row; a child table and its parent both name one, or neither), else by
the raw topic offset (``ponte.transform.normalize.Version``).

Mappings are validated at load against the CRM model: unknown entities or columns, and
references to entities that do not exist, are errors naming the table and field; so are
skip rules with an unknown operator, no operator, or an empty list.
"""

from __future__ import annotations

import hashlib
import json
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from ponte.shared.config_files import ConfigError, located_problem, parse_yaml
from ponte.shared.crm_model import (
    CODE_ENTITY,
    VALUE_TYPES,
    ColumnSpec,
    CrmModel,
    EntitySpec,
    crm_model,
)
from ponte.shared.parsers import (
    NUMBER_PARSERS,
    PARSERS,
    NumberFormat,
    ParseError,
    as_integer,
    parse_with_format,
)
from ponte.shared.source_kinds import SourceKind, spec_of
from ponte.shared.value_rules import fill_template, map_value

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
    type: ValueType | None = None
    """How the value is read; by default, as the column's model type says (a decimal
    column reads a decimal), set when the mapping is checked against the model."""
    reference: str | None = None
    """Target entity: the value is that entity's ERP key."""
    code: str | None = None
    """Code list: the value is a code in it (or a ``$code`` object naming the list)."""
    on_missing: Literal["park", "stub"] = "park"
    by: str | None = None
    """For a reference: the target's column the value is matched against (``document``,
    ``email``) instead of the target's ERP key; read as that column's type, and resolved
    only when exactly one live row has it."""
    source: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """For a reference: the source the target comes from, when it is not this row's own
    (a shop's customer to the ERP's company)."""
    on_code: Literal["key", "description", "refuse"] = "key"
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
    def value_type(self) -> ValueType:
        """The type the value is read as (text until checked against the model)."""
        return self.type or "text"

    @property
    def is_code(self) -> bool:
        return self.code is not None

    def convert(self, value: Any) -> Any:
        """The column's value from what the ERP sent: the value map, the case, then the
        column's type read in the field's own number or date format. Raises
        ``ParseError`` naming what is wrong (the caller adds table and field)."""
        if self.values is not None:
            value = map_value(value, self.values, self.unknown, self.default)
        if self.case is not None and isinstance(value, str):
            value = value.upper() if self.case == "upper" else value.lower()
        if self.number_format is not None:
            number = NUMBER_PARSERS[self.number_format](value)
            return as_integer(number, value) if self.type == "integer" else number
        if self.date_format is not None:
            return parse_with_format(value, self.date_format, with_time=self.type == "datetime")
        return PARSERS[self.value_type](value)

    def check_expressions(self) -> None:
        """Formats fit the type (once the type is known: given, or the column's)."""
        if self.type is None:
            return
        if self.number_format is not None and self.type not in ("decimal", "integer", "number"):
            raise ValueError(f"number_format is for decimal or integer columns, not {self.type}")
        if self.date_format is not None and self.type not in ("date", "datetime"):
            raise ValueError(f"date_format is for date or datetime columns, not {self.type}")

    @model_validator(mode="after")
    def _expressions_fit_the_type(self) -> FieldMapping:
        self.check_expressions()
        if self.date_format is not None and "%" not in self.date_format:
            raise ValueError(f"date_format {self.date_format!r} has no % directive")
        if self.unknown == "default" and self.default is None:
            raise ValueError("unknown: default needs a default")
        if (self.values is not None or self.default is not None) and (
            self.reference is not None or self.code is not None
        ):
            raise ValueError("values and default are for plain columns, not references or codes")
        if (self.by is not None or self.source is not None) and self.reference is None:
            raise ValueError("by and source are for references (reference: <entity>)")
        if self.source is not None and self.on_missing == "stub":
            raise ValueError(
                "a reference into another source cannot create a placeholder there "
                "(on_missing: stub): that source's rows are its own to write"
            )
        if self.by is not None and self.on_missing == "stub":
            raise ValueError(
                "a reference by another field cannot create a placeholder (on_missing: stub): "
                "the placeholder would have no key of its own"
            )
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

    type: ValueType | None = None
    """As the column's model type says unless given."""
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
            return PARSERS[self.type or "boolean"](text in self.true_when.in_)
        assert self.template is not None
        return PARSERS[self.type or "text"](fill_template(self.template, data))


SKIP_OPERATORS = ("in", "not_in", "empty")


def _skip_text(value: Any) -> str | None:
    """The text a skip rule compares: trimmed; None for an object or list (never equal)."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


class SkipRule(BaseModel):
    """One row filter: ``{field, in | not_in | empty: true, reason}`` (exactly one
    operator). Checked in a before-validator so an unknown operator or an empty list is
    refused naming the field, not only the rule's position in the list."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    field: str = Field(min_length=1)
    in_: tuple[str, ...] | None = Field(default=None, alias="in")
    not_in: tuple[str, ...] | None = None
    empty: bool | None = None
    reason: str | None = Field(default=None, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _one_known_operator(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a skip rule is an object like {field: tipo, in: [I, X]}")
        field = data.get("field")
        where = f"skip rule on field {field!r}" if field else "skip rule"
        if not isinstance(field, str) or not field.strip():
            raise ValueError(f"{where}: 'field' is required")
        unknown = sorted(set(data) - {"field", "reason", *SKIP_OPERATORS})
        if unknown:
            raise ValueError(
                f"{where}: unknown operator {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(SKIP_OPERATORS)})"
            )
        operators = [name for name in SKIP_OPERATORS if name in data]
        if len(operators) != 1:
            raise ValueError(f"{where}: give exactly one of {', '.join(SKIP_OPERATORS)}")
        operator = operators[0]
        value = data[operator]
        if operator == "empty":
            if value is not True:
                raise ValueError(f"{where}: empty takes only true (use not_in for the opposite)")
        elif not isinstance(value, list) or not value:
            raise ValueError(f"{where}: {operator} needs a non-empty list of values")
        elif any(isinstance(item, dict | list) or item is None for item in value):
            raise ValueError(f"{where}: {operator} lists plain values (text or numbers)")
        else:
            data = {**data, operator: [str(item).strip() for item in value]}
        return data

    @property
    def rule(self) -> str:
        """The rule as text, its name in the metric and in ``skipped_rows``."""
        if self.in_ is not None:
            return f"{self.field} in [{', '.join(self.in_)}]"
        if self.not_in is not None:
            return f"{self.field} not_in [{', '.join(self.not_in)}]"
        return f"{self.field} empty"

    def matches(self, data: dict[str, Any]) -> bool:
        text = _skip_text(data.get(self.field))
        if self.empty:
            return text == ""
        if text is None:
            return False
        if self.in_ is not None:
            return text in self.in_
        assert self.not_in is not None
        return text not in self.not_in


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
    skip: list[SkipRule] = Field(default_factory=list)
    """Row filters: a row matching any is skipped (counted and recorded, not stored)."""
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

    @cached_property
    def filtered_by(self) -> frozenset[str]:
        """The fields skip rules read: known to the mapping, so not ``extra``."""
        return frozenset(rule.field for rule in self.skip)

    def skip_rule(self, data: dict[str, Any]) -> SkipRule | None:
        """The first rule that skips this row, if any."""
        return next((rule for rule in self.skip if rule.matches(data)), None)

    def field(self, name: str) -> FieldMapping | None:
        spec = self.fields.get(name)
        return FieldMapping(column=spec) if isinstance(spec, str) else spec


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    tables: dict[str, TableMapping]

    @model_validator(mode="after")
    def _matches_crm_model(self, info: ValidationInfo) -> Mapping:
        # ``load_mapping`` checks against the model itself, to name the file's line.
        if not (info.context or {}).get("unchecked"):
            check_against_model(self, crm_model())
        return self

    @cached_property
    def digest(self) -> str:
        """A stable hash of the mapping as the transform applies it, recorded with every
        row it writes (``mapping_digest``), so ``ponte reprocess`` can tell a row written
        by another mapping from one this mapping already wrote.

        Read only after the model check (``parse_mapping``, or this model's validator),
        which resolves each field's type from its column: a change in the model that
        changes how a field is read (a column's type, hence a field's default parser)
        changes the digest too. Short and long forms of a field (``nome: name`` and
        ``{column: name}``) are one form by then, and key order does not count, so a
        reformatted file keeps its digest. 16 hex digits: told apart, not secret."""
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, default=str
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

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


class MappingMismatch(ValueError):
    """A mapping that does not fit the CRM model; ``path`` locates the entry in the file
    (``tables.Empresa.fields.cnpj``)."""

    def __init__(self, path: tuple[str, ...], reason: str) -> None:
        where = f"table {path[1]!r}" if len(path) > 1 else "mapping"
        if len(path) > 3:
            where += f" {path[2].removesuffix('s')} {path[3]!r}"
        elif len(path) == 3 and path[2] in ("parent", "version"):
            where += f" {path[2]}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.reason = reason


def check_against_model(mapping: Mapping, model: CrmModel) -> None:
    """Every table's entity, columns, references and codes exist in ``model`` and fit
    their types; a field that names no type reads its column's (a decimal column reads a
    decimal). Raises ``MappingMismatch`` naming the table and field."""
    for table_name, table in mapping.tables.items():
        at = ("tables", table_name)
        if table.entity not in model:
            raise MappingMismatch(
                (*at, "entity"),
                f"unknown entity {table.entity!r} (entities: {', '.join(model.entities)})",
            )
        entity = model.entity(table.entity)
        columns = set(entity.mappable)
        if table.parent is not None:
            where = (*at, "parent")
            if table.parent.entity not in model:
                raise MappingMismatch(where, f"parent: unknown entity {table.parent.entity!r}")
            _check_column(where, "parent", table.parent.column, entity, columns)
            _check_foreign_key(where, model, table.entity, table.parent.column, table.parent.entity)
            _check_same_sequence((*at, "version"), table, mapping.tables)
        mapped = {
            spec.column
            for name in table.fields
            if (spec := table.field(name)) is not None and not spec.ignore
        }
        for column, rule in table.computed.items():
            computed_at = (*at, "computed", column)
            _check_column(computed_at, f"computed {column!r}", column, entity, columns)
            if column in mapped:
                raise MappingMismatch(
                    computed_at, f"computed {column!r}: the column is also mapped from a field"
                )
            rule.type = _value_type(computed_at, rule.type, entity.columns[column])
        for field_name in table.fields:
            spec = table.field(field_name)
            assert spec is not None
            if not spec.ignore:
                _check_field((*at, "fields", field_name), spec, model, table.entity, columns)


def _check_field(
    where: tuple[str, ...], spec: FieldMapping, model: CrmModel, entity: str, columns: set[str]
) -> None:
    if spec.column is None:
        raise MappingMismatch(where, "no column")
    _check_column(where, "", spec.column, model.entity(entity), columns)
    if spec.reference is not None and spec.reference not in model:
        raise MappingMismatch(where, f"unknown entity {spec.reference!r}")
    target = CODE_ENTITY if spec.is_code else spec.reference
    column = model.entity(entity).columns[spec.column]
    if target is not None:
        _check_foreign_key(where, model, entity, spec.column, target)
        if spec.by is not None:
            _check_by(where, spec, model.entity(target))
        return
    if column.is_reference:
        raise MappingMismatch(
            where,
            f"column {spec.column!r} holds the id of a {column.references}: map the field "
            f"as {{reference: {column.references}, column: {spec.column}}}"
            + (" or {code: <list>, ...}" if column.references == CODE_ENTITY else ""),
        )
    spec.type = _value_type(where, spec.type, column)
    if spec.on_code == "description" and spec.type != "text":
        raise MappingMismatch(
            where, f"on_code: description writes text, and {spec.column!r} reads {spec.type}"
        )
    try:
        spec.check_expressions()
        if spec.default is not None:
            spec.convert(spec.default)
    except ParseError as error:
        raise MappingMismatch(where, f"default {error}") from None
    except ValueError as error:
        raise MappingMismatch(where, str(error)) from None


def _check_same_sequence(
    where: tuple[str, ...], child: TableMapping, tables: dict[str, TableMapping]
) -> None:
    """A child sent alone is compared with its parent's version (the set that last replaced
    the parent's children): both must order by the same kind of sequence, the source's
    or the raw topic offset, or a rowversion would be compared with an offset."""
    assert child.parent is not None
    for name, parent in tables.items():
        if parent.entity != child.parent.entity or parent.code_table is not None:
            continue
        if parent.version is not None and child.version is None:
            raise MappingMismatch(
                where,
                f"its parent table {name!r} names a version sequence (version.field) and "
                "this table does not; give both one, or neither",
            )
        if parent.version is None and child.version is not None:
            raise MappingMismatch(
                where,
                "this table names a version sequence (version.field) and its parent table "
                f"{name!r} does not; give both one, or neither",
            )


_BY_TYPES = frozenset({"text", "document", "email", "integer", "bigint"})
"""Columns a reference may match by: their values compare as the same text in Python and
PostgreSQL (a decimal's ``1.5`` is ``1.5000`` there, a boolean ``True`` is ``true``)."""


def _check_by(where: tuple[str, ...], spec: FieldMapping, target: EntitySpec) -> None:
    """``by`` names a plain column of the target; the value is read as that column's type
    so it compares equal to what the target's own mapping stored (digits of a CNPJ)."""
    assert spec.by is not None
    by = target.columns.get(spec.by)
    if by is None or by.type not in _BY_TYPES:
        fit = sorted(c.name for c in target.columns.values() if c.type in _BY_TYPES)
        raise MappingMismatch(
            where,
            f"by: {spec.by!r} is not a text, document, e-mail or integer column of "
            f"{target.name!r} (those it has: {', '.join(fit)})",
        )
    spec.type = _value_type(where, spec.type, by)


def _value_type(
    where: tuple[str, ...], declared: ValueType | None, column: ColumnSpec
) -> ValueType:
    """The parser a field uses: its own ``type`` if it fits the column, else the column's."""
    allowed = VALUE_TYPES.get(column.type, frozenset())
    if declared is None:
        return column.default_value_type or "text"  # type: ignore[return-value]
    if declared not in allowed:
        raise MappingMismatch(
            where,
            f"type {declared!r} cannot be written into column {column.name!r}, which is "
            f"{column.describe()} (types that fit: {', '.join(sorted(allowed)) or 'none'})",
        )
    return declared


def _check_column(
    where: tuple[str, ...], what: str, column: str, entity: EntitySpec, columns: set[str]
) -> None:
    if column in entity.derived:
        raise MappingMismatch(
            where, f"column {column!r} is computed by Ponte (derived), a mapping may not write it"
        )
    if column not in columns:
        raise MappingMismatch(
            where,
            f"{what + ': ' if what else ''}column {column!r} is not in the entity {entity.name!r} "
            f"(known: {', '.join(sorted(columns))}); a column the model lacks is added in "
            "the deployment's model file (PONTE_MODEL_FILE), see docs/onboarding.md",
        )


def _check_foreign_key(
    where: tuple[str, ...], model: CrmModel, entity: str, column: str, target: str
) -> None:
    """A reference column must be a foreign key to the referenced entity's table."""
    points_to = model.references_of(entity).get(column)
    if points_to != target:
        raise MappingMismatch(
            where,
            f"column {column!r} does not refer to {target!r} "
            f"(it refers to {points_to or 'nothing'})",
        )


def parse_mapping(text: str, source_name: str, model: CrmModel | None = None) -> Mapping:
    """A mapping file's text, checked against ``model`` (this process's by default); an
    error names the file, the line, the table and the field."""
    document: Any = parse_yaml(text, source_name)
    try:
        mapping = Mapping.model_validate(document, context={"unchecked": True})
    except ValidationError as error:
        loc, reason = located_problem(error.errors(), frozenset({"FieldMapping"}))
        raise ConfigError(source_name, text, loc, reason) from None
    try:
        check_against_model(mapping, model or crm_model())
    except MappingMismatch as error:
        raise ConfigError(source_name, text, error.path, str(error)) from None
    return mapping


def load_mapping(path: Path, model: CrmModel | None = None) -> Mapping:
    return parse_mapping(path.read_text(encoding="utf-8"), str(path), model)


@cache
def default_mapping(kind: str) -> Mapping:
    text = (resources.files("ponte.shared") / "mappings" / f"{kind}.yaml").read_text(
        encoding="utf-8"
    )
    return parse_mapping(text, f"ponte/shared/mappings/{kind}.yaml")


def override_path(kind: SourceKind, source_id: str, overrides_dir: Path | None) -> Path | None:
    """The file ``mapping_for`` reads instead of the shipped default, if any."""
    if overrides_dir is not None:
        for name in (f"{source_id}.yaml", f"{kind.value}.yaml"):
            if (overrides_dir / name).exists():
                return overrides_dir / name
    return None


def mapping_for(kind: SourceKind, source_id: str, overrides_dir: Path | None = None) -> Mapping:
    """The source's own mapping file, else its kind's override, else the shipped default."""
    path = override_path(kind, source_id, overrides_dir)
    if path is not None:
        return load_mapping(path)
    return default_mapping(spec_of(kind).default_mapping)


def mapping_origin(kind: SourceKind, source_id: str, overrides_dir: Path | None = None) -> str:
    """Where ``mapping_for``'s mapping comes from, in words (for the dry run)."""
    path = override_path(kind, source_id, overrides_dir)
    return str(path) if path else f"shipped default {spec_of(kind).default_mapping}.yaml"


assert set(PARSERS) == set(get_args(ValueType)), "ValueType and PARSERS must list the same types"
