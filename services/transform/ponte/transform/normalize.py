"""Nested source rows into flat, typed CRM rows with stable keys (pure: no IO).

The ERP's "table of tables with recursion" arrives as one record per raw event: a row
whose values may be child tables (``{"table": ..., "rows": [...]}`` or a list of objects),
nested to any depth, and ``$code`` objects pointing into the generic code table.
``normalize_record`` turns it into a ``NormalizedRecord``: the root row first, each
descendant after its parent, every value parsed to its column's type, every reference
(parent, other entity by ERP key, code) left for the repository to resolve by key.

Keys are never random: a child's key is its parent's key plus its own (``PED-1001/1``),
so a repeated event reaches the same rows (dlt's deterministic child keys, without
hashing, so a person can read them). Any value that cannot be read rejects the record
with the field's path (``Itens pedido[0].preco``) and the reason; fields the mapping does
not know are kept in ``extra`` and reported, never silently dropped.

A row a table's ``skip`` rule matches (``ponte.shared.mapping.SkipRule``) is not a row:
a skipped root raises ``RecordSkipped`` (the record is not stored), a skipped child is
left out of its parent's child set (so a stored one is tombstoned); either way the skip
is returned (``SkippedRow``) for the processor to count and record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import field as dataclass_field
from datetime import datetime
from typing import Any

from ponte.shared import strict_json
from ponte.shared.crm_model import crm_model
from ponte.shared.events import Operation, RawEvent
from ponte.shared.mapping import FieldMapping, Mapping, TableMapping
from ponte.shared.parsers import PARSERS, ParseError
from ponte.shared.versions import MAX_SEQUENCE, Version

MAX_DEPTH = strict_json.RAW_EVENT_DEPTH // 2
"""Child tables nested deeper than this reject the record instead of recursing on. Each
child level is at least two JSON levels (a list of rows, a row), so a record within the
edge's depth limit (``strict_json``) never reaches it: ingest refuses what is too deep."""


class RecordRejected(Exception):
    """The record cannot be stored; ``field`` is the path of the value at fault."""

    def __init__(
        self,
        code: str,
        reason: str,
        field: str | None = None,
        unmapped: set[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field
        self.unmapped = unmapped or set()


@dataclass(frozen=True)
class SkippedRow:
    """A row a skip rule left out: which table, which rule, where in the event."""

    table: str
    rule: str
    reason: str | None
    path: str


class RecordSkipped(Exception):
    """The event's root row matches a skip rule: nothing of the record is stored. Not an
    error: the processor counts and records it (``skipped_rows``) and writes nothing."""

    def __init__(self, skipped: SkippedRow, unmapped: set[tuple[str, str]]) -> None:
        super().__init__(f"{skipped.path}: skipped by {skipped.rule}")
        self.skipped = skipped
        self.unmapped = unmapped


@dataclass
class Reference:
    """A column that holds another row's id, found by that row's key."""

    column: str
    field: str
    target_entity: str
    target_key: str
    on_missing: str = "park"
    stub_values: dict[str, Any] = dataclass_field(default_factory=dict)
    target_source: str | None = None
    """The target's source, when it is not the row's own."""
    by: str | None = None
    """The target's column ``target_key`` is matched against, instead of its ERP key."""
    writes: str = "id"
    """``description``: the column takes the (code) target's description, not its id
    (``on_code: description``), falling back to ``fallback`` when it has none."""
    fallback: Any = None

    def target(self, source_id: str) -> tuple[str, str, str]:
        """Who the target is: (entity, source, key) or, by another field, (entity, source,
        ``field=value``), the key batches and lookups file it under."""
        source = self.target_source or source_id
        key = self.target_key if self.by is None else f"{self.by}={self.target_key}"
        return (self.target_entity, source, key)


@dataclass
class ChildSet:
    """The children of one table a parent row carries now; the others are removed."""

    entity: str
    parent_column: str
    keys: set[str]


@dataclass
class NormalizedRow:
    entity: str
    source_table: str
    source_key: str
    values: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)
    child_sets: list[ChildSet] = field(default_factory=list)
    depth: int = 0


@dataclass
class NormalizedRecord:
    """One root row and its descendants, applied (or not) as one unit."""

    source_id: str
    event_id: str
    operation: Operation
    version: Version
    rows: list[NormalizedRow]
    unmapped: set[tuple[str, str]] = field(default_factory=set)
    skipped: list[SkippedRow] = field(default_factory=list)
    """Child rows skip rules left out of their parent's set."""
    mapping_digest: str | None = None
    """The digest of the mapping that read it (``Mapping.digest``), stored with its rows."""
    reprocess: bool = False
    """Re-applied by ``ponte reprocess``: an equal version rewrites a row another mapping
    wrote (``ponte.shared.versions.applies``)."""

    @property
    def root(self) -> NormalizedRow:
        return self.rows[0]

    @property
    def identity(self) -> tuple[str, str, str]:
        """One event can carry several records (a shop order: customer, company, order)."""
        return (self.event_id, self.root.entity, self.root.source_key)


def _is_child_table(value: Any) -> bool:
    if isinstance(value, dict):
        return isinstance(value.get("rows"), list) and set(value) <= {"table", "rows"}
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _child_rows(name: str, value: Any) -> tuple[str, list[Any]]:
    if isinstance(value, dict):
        return str(value.get("table") or name), value["rows"]
    return name, value


def _code_object(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict) and set(value) == {"$code"} and isinstance(value["$code"], dict):
        inner = value["$code"]
        table, key = inner.get("tabela"), inner.get("chave")
        if table not in (None, "") and key not in (None, ""):
            return str(table).strip(), str(key).strip()
        raise ParseError("a $code needs 'tabela' and 'chave'")
    return None


def _key_part(value: Any) -> str:
    if (
        value is None
        or isinstance(value, dict | list)
        or (isinstance(value, str) and not value.strip())
    ):
        raise ParseError("is missing or empty")
    return str(value).strip()


class _Normalizer:
    """Walks one record; collects rows and unmapped fields."""

    def __init__(self, mapping: Mapping, source_id: str) -> None:
        self.mapping = mapping
        self.source_id = source_id
        self.rows: list[NormalizedRow] = []
        self.keys: set[tuple[str, str]] = set()
        self.unmapped: set[tuple[str, str]] = set()
        self.skipped: list[SkippedRow] = []

    def reject(self, code: str, reason: str, path: str | None) -> RecordRejected:
        return RecordRejected(code, reason, path, self.unmapped)

    def row(
        self,
        table_name: str,
        table: TableMapping,
        data: Any,
        *,
        path: str,
        parent: tuple[str, str] | None,
        depth: int,
        key_only: bool = False,
    ) -> str | None:
        """Normalise one row (and, recursively, its children); returns its source key, or
        None when a skip rule leaves it out (checked before the key: a rule such as
        ``cnpj empty`` may well match rows that would otherwise be refused)."""
        if depth > MAX_DEPTH:
            raise self.reject("too_deep", f"child tables nest deeper than {MAX_DEPTH}", path)
        if not isinstance(data, dict):
            raise self.reject("invalid_row", "a row must be a JSON object", path)
        skip = None if key_only else table.skip_rule(data)
        if skip is not None:
            self.skipped.append(SkippedRow(table_name, skip.rule, skip.reason, path))
            return None
        row = NormalizedRow(table.entity, table_name, "", depth=depth)
        own_key = self._key(table, data, path)
        parent_key = self._parent(table, data, row, path, parent)
        row.source_key = own_key if parent_key is None else f"{parent_key}/{own_key}"
        if (row.entity, row.source_key) in self.keys:
            raise self.reject(
                "duplicate_key", f"two rows of {table_name!r} have the key {row.source_key!r}", path
            )
        self.keys.add((row.entity, row.source_key))
        self.rows.append(row)
        if key_only:
            return row.source_key
        if table.code_table is not None:
            self._code_row(table, data, row, path)
            return row.source_key
        for name, value in data.items():
            self._value(table_name, table, row, name, value, f"{path}.{name}", depth)
        self._defaults(table, data, row, path)
        for column, rule in table.computed.items():
            try:
                row.values[column] = rule.compute(data)
            except ParseError as error:
                raise self.reject(
                    "invalid_value", f"computed column {column} of {path}: {error}", path
                ) from None
        # The newest version is the whole row: a mapped column it does not carry is empty,
        # so the result does not depend on the order versions arrive in.
        referenced = {reference.column for reference in row.references}
        for column in table.columns:
            if column not in referenced:
                row.values.setdefault(column, None)
        return row.source_key

    def _defaults(
        self, table: TableMapping, data: dict[str, Any], row: NormalizedRow, path: str
    ) -> None:
        """Fields the row does not carry, or carries empty: their ``default``, and a
        refusal for a ``required`` one still empty."""
        for name in table.fields:
            spec = table.field(name)
            if spec is None or spec.ignore or spec.column is None:
                continue
            present = data.get(name)
            if spec.default is not None and (
                present is None or (isinstance(present, str) and not present.strip())
            ):
                row.values[spec.column] = spec.convert(spec.default)
            if (
                spec.required
                and row.values.get(spec.column) is None
                and not any(reference.column == spec.column for reference in row.references)
            ):
                raise self.reject(
                    "missing_required", f"field {path}.{name} is required", f"{path}.{name}"
                )

    def _key(self, table: TableMapping, data: dict[str, Any], path: str) -> str:
        parts = []
        for name in table.key:
            try:
                parts.append(_key_part(data.get(name)))
            except ParseError as error:
                raise self.reject(
                    "missing_key", f"key field {name} {error}", f"{path}.{name}"
                ) from None
        return ":".join(parts)

    def _parent(
        self,
        table: TableMapping,
        data: dict[str, Any],
        row: NormalizedRow,
        path: str,
        parent: tuple[str, str] | None,
    ) -> str | None:
        """Link a child to its parent: the enclosing row when nested, else the parent's
        ERP key in ``parent.field`` when the child arrives as its own event."""
        if table.parent is None:
            if parent is not None:
                raise self.reject(
                    "unmapped_child",
                    f"table {row.source_table!r} has no parent in the mapping",
                    path,
                )
            return None
        if parent is not None:
            parent_entity, parent_key = parent
        else:
            field_name = table.parent.field
            if field_name is None:
                raise self.reject(
                    "missing_parent",
                    "child row sent alone and the mapping names no parent field",
                    path,
                )
            try:
                parent_key = _key_part(data.get(field_name))
            except ParseError as error:
                raise self.reject(
                    "missing_parent", f"parent field {field_name} {error}", f"{path}.{field_name}"
                ) from None
            parent_entity = table.parent.entity
        row.references.append(Reference(table.parent.column, path, parent_entity, parent_key))
        return parent_key

    def _code_row(
        self, table: TableMapping, data: dict[str, Any], row: NormalizedRow, path: str
    ) -> None:
        fields = table.code_table
        assert fields is not None
        list_name = _key_part(data.get(fields.list))
        code = _key_part(data.get(fields.key))
        row.source_key = f"{list_name}:{code}"
        row.values = {
            "list_name": list_name,
            "code": code,
            "description": PARSERS["text"](data.get(fields.description)),
        }
        parent_code = data.get(fields.parent_key)
        if parent_code not in (None, ""):
            # The parent as a $code object names its own list (region > state > city
            # across lists); as a plain key it is in parent_list, else in this row's list.
            try:
                named = _code_object(parent_code)
            except ParseError as error:
                raise self.reject(
                    "invalid_value", f"field {path}.{fields.parent_key}: {error}",
                    f"{path}.{fields.parent_key}",
                ) from None  # fmt: skip
            if named is not None:
                parent_list, parent_key = named
            elif isinstance(parent_code, dict | list):
                raise self.reject(
                    "invalid_value",
                    f"field {path}.{fields.parent_key}: a parent code must be a key or a "
                    f"$code object, not {type(parent_code).__name__} {parent_code!r:.80}",
                    f"{path}.{fields.parent_key}",
                )
            else:
                parent_list = str(data.get(fields.parent_list) or list_name).strip()
                parent_key = str(parent_code).strip()
            row.references.append(
                Reference(
                    "parent_id",
                    f"{path}.{fields.parent_key}",
                    "code",
                    f"{parent_list}:{parent_key}",
                    on_missing="stub",
                    stub_values={"list_name": parent_list, "code": parent_key},
                )
            )
        else:
            row.values["parent_id"] = None
        # The fields the table's own rules read (its version sequence, its skip rules) are
        # known too, as on any other table: a code table that names ``version.field`` put
        # its sequence into every code's ``extra`` and reported it unmapped.
        known = {fields.list, fields.key, fields.description, fields.parent_key, fields.parent_list}
        known |= table.filtered_by
        if table.version is not None:
            known.add(table.version.field)
        for name, value in data.items():
            if name not in known:
                row.extra[name] = value
                self.unmapped.add((row.source_table, name))

    def _value(
        self,
        table_name: str,
        table: TableMapping,
        row: NormalizedRow,
        name: str,
        value: Any,
        path: str,
        depth: int,
    ) -> None:
        spec = table.field(name)
        if spec is None and _is_child_table(value):
            self._children(row, name, value, path, depth)
            return
        if spec is None:
            if (
                name not in table.key
                and name not in table.computed_from
                and name not in table.filtered_by
                and (table.parent is None or name != table.parent.field)
                and (table.version is None or name != table.version.field)
            ):
                self.unmapped.add((table_name, name))
                row.extra[name] = value
            return
        if spec.ignore:
            return
        assert spec.column is not None
        try:
            self._mapped_value(row, spec, spec.column, value, path)
        except ParseError as error:
            raise self.reject("invalid_value", f"field {path}: {error}", path) from None

    def _mapped_value(
        self, row: NormalizedRow, spec: FieldMapping, column: str, value: Any, path: str
    ) -> None:
        code = _code_object(value)
        if spec.is_code or code is not None:
            if code is None and (value is None or (isinstance(value, str) and not value.strip())):
                row.values[column] = None
                return
            list_name, key = code if code is not None else (str(spec.code), _key_part(value))
            writes = "id"
            if not spec.is_code and spec.reference != "code":
                if spec.reference is None and spec.on_code == "key":
                    # A text or typed column sent a code (a city as a code of its list):
                    # the code's own key is the value, parsed as the column's type.
                    row.values[column] = PARSERS[spec.value_type](key)
                    return
                if spec.reference is not None or spec.on_code != "description":
                    raise ParseError(
                        f"a $code ({list_name}:{key}) was sent for a field that is not a "
                        "code; map it as {code: <list>, column: <..._id>}, or set on_code: "
                        "key (or description) to store the code's key (or description) here"
                    )
                writes = "description"
            row.references.append(
                Reference(
                    column,
                    path,
                    "code",
                    f"{list_name}:{key}",
                    on_missing="stub",
                    stub_values={"list_name": list_name, "code": key},
                    writes=writes,
                    fallback=PARSERS["text"](key),
                )
            )
            return
        if spec.reference is not None:
            if value is None or (isinstance(value, str) and not value.strip()):
                row.values[column] = None
                return
            if spec.by is not None:
                # Read as the target column is stored (a CNPJ's digits), so they match.
                typed = spec.convert(value)
                if typed is None:
                    row.values[column] = None
                    return
                target_key = typed if isinstance(typed, str) else str(typed)
            else:
                target_key = _key_part(value)
            row.references.append(
                Reference(
                    column,
                    path,
                    spec.reference,
                    target_key,
                    on_missing=spec.on_missing,
                    stub_values=_stub_values(spec.reference, value),
                    target_source=spec.source,
                    by=spec.by,
                )
            )
            return
        row.values[column] = spec.convert(value)

    def _children(self, row: NormalizedRow, name: str, value: Any, path: str, depth: int) -> None:
        child_name, child_rows = _child_rows(name, value)
        child_table = self.mapping.table(child_name)
        if child_table is None:
            self.unmapped.add((child_name, "*"))
            row.extra[name] = value
            return
        if child_table.parent is None:
            raise self.reject(
                "unmapped_child", f"table {child_name!r} has no parent in the mapping", path
            )
        keys = {
            key
            for index, child in enumerate(child_rows)
            if (
                key := self.row(
                    child_name,
                    child_table,
                    child,
                    path=f"{path}[{index}]",
                    parent=(row.entity, row.source_key),
                    depth=depth + 1,
                )
            )
            is not None
        }
        # A skipped child is not in the set: a stored one of its key is tombstoned.
        row.child_sets.append(ChildSet(child_table.entity, child_table.parent.column, keys))


def _stub_values(entity: str, value: Any) -> dict[str, Any]:
    """What a placeholder row knows about itself: its code, when the entity has one."""
    return {"code": str(value).strip()} if "code" in crm_model().entity(entity).columns else {}


def version_id(event: RawEvent) -> str:
    """The tie-breaker when two versions share ``occurred_at`` (common with minute-precision
    ERP times): the source's own event id, which ERPs number in order, then the row's
    position in its delivery. Ponte's event id is a hash: it would pick a random winner."""
    if event.source_event_id:
        return f"{event.source_event_id}/{event.index:06d}"
    return event.event_id


def sequence_of(table_name: str, table: TableMapping, data: Any, offset: int | None) -> int | None:
    """The version's sequence: the row's own field when the table's mapping names one
    (required then, on deletes too: a version without it could not be ordered against
    the others), else the raw topic ``offset`` (``Version``)."""
    if table.version is None:
        return offset
    name = table.version.field
    path = f"{table_name}.{name}"
    value = data.get(name) if isinstance(data, dict) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordRejected(
            "missing_version",
            f"field {path} is the table's version sequence (version.field) and is missing",
            path,
        )
    try:
        return parse_sequence(value)
    except ParseError as error:
        raise RecordRejected("invalid_version", f"field {path}: {error}", path) from None


def parse_sequence(value: Any) -> int:
    """A sequence as ERPs send it: an integer, its decimal digits as text, or hex with
    ``0x`` (SQL Server's ``rowversion``); from 0 to ``MAX_SEQUENCE``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ParseError(f"a version sequence must be an integer, not {type(value).__name__}")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        try:
            if text.lower().startswith("0x"):
                number = int(text[2:], 16)
            elif text.isdigit() and text.isascii():
                number = int(text)
            else:
                raise ValueError(text)
        except ValueError:
            raise ParseError(
                f"a version sequence must be digits or 0x-hex, not {text[:40]!r}"
            ) from None
    if not 0 <= number <= MAX_SEQUENCE:
        raise ParseError(f"a version sequence must be between 0 and {MAX_SEQUENCE}")
    return number


def normalize_record(
    event: RawEvent,
    mapping: Mapping,
    *,
    table: str | None = None,
    payload: dict[str, Any] | None = None,
    version_at: datetime | None = None,
    offset: int | None = None,
) -> NormalizedRecord:
    """Normalise one record event (or, for shops, one adapted row of it); ``offset`` is
    the event's raw topic offset, its version's sequence unless the mapping names one.
    Raises ``RecordRejected`` when it cannot be stored, ``RecordSkipped`` when a skip rule
    leaves its root row out."""
    table_name = table or event.topic
    data = event.payload if payload is None else payload
    walker = _Normalizer(mapping, event.source_id)
    table_mapping = mapping.table(table_name)
    if table_mapping is None:
        raise RecordRejected(
            "unknown_table",
            f"table {table_name!r} is not in the {mapping.kind} mapping",
            None,
            {(table_name, "*")},
        )
    try:
        root_key = walker.row(
            table_name,
            table_mapping,
            data,
            path=table_name,
            parent=None,
            depth=0,
            key_only=event.operation is Operation.DELETE,
        )
    except ParseError as error:  # code-table key fields
        raise RecordRejected(
            "invalid_value", f"{table_name}: {error}", table_name, walker.unmapped
        ) from None
    if root_key is None:
        raise RecordSkipped(walker.skipped[0], walker.unmapped)
    version = Version(
        version_at or event.occurred_at or event.received_at,
        sequence_of(table_name, table_mapping, data, offset),
        version_id(event),
    )
    return NormalizedRecord(
        event.source_id,
        event.event_id,
        event.operation,
        version,
        walker.rows,
        walker.unmapped,
        walker.skipped,
    )
