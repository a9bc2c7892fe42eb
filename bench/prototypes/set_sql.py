"""The SQL of the set-based write path prototype (issue #16), generated once per entity
from the CRM model: a staging table per entity, and the few set statements that merge a
staged batch into the model (stubs, unpark, versioned merge with references joined,
parked and outbox rows in the same statement, parked release, child sets).

Prototype scope, said plainly: references by key only (``by:`` another field and
``on_code: description`` are not staged); grandchildren of a dropped child are not
tombstoned; outbox values are built by PostgreSQL (``jsonb_build_object``), so numbers
are JSON numbers where the live path writes decimals as text. ``bench/prototypes/
set_merge.py`` runs these and checks the result against the live repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from ponte.shared.crm_model import crm_model
from ponte.shared.versions import version_order

BASE = [
    ("source_id", "text"),
    ("source_table", "text"),
    ("source_key", "text"),
    ("version_at", "timestamptz"),
    ("version_seq", "int8"),
    ("version_event_id", "text"),
    ("event_id", "text"),
    ("depth", "int4"),
    ("deleted_at", "timestamptz"),
    ("extra", "jsonb"),
]
"""Staging columns every entity has, in COPY order, before its content columns."""
REF_PARTS = [("key", "text"), ("src", "text"), ("field", "text"), ("stub", "jsonb")]
"""Per reference column ``c``: ``c__key`` (target key), ``c__src`` (target source when not
the row's own), ``c__field`` (the path, for the parked row), ``c__stub`` (the placeholder's
values when a missing target is created, NULL when it parks)."""


def _type(column: sa.Column[object]) -> str:
    from sqlalchemy.dialects import postgresql

    return str(column.type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


def vo(alias: str) -> str:
    return version_order(alias)


@dataclass
class EntitySql:
    """One entity's staging table and statements."""

    entity: str
    table: str
    stage: str
    content: list[str]
    refs: dict[str, str]
    parent: tuple[str, str] | None
    children: list[tuple[str, str]]
    stub_columns: dict[str, list[str]] = field(default_factory=dict)
    """Reference column -> the target columns its placeholders fill (``stub_values``)."""

    @property
    def columns(self) -> list[str]:
        cols = [name for name, _ in BASE] + self.content
        for ref in self.refs:
            cols += [f"{ref}__{part}" for part, _ in REF_PARTS]
        cols += [f"sets__{child}" for child, _ in self.children]
        return cols

    def create_stage(self) -> str:
        table = crm_model().table(self.entity)
        defs = [f"{name} {kind}" for name, kind in BASE]
        defs += [f"{c} {_type(table.c[c])}" for c in self.content]
        for ref in self.refs:
            defs += [f"{ref}__{part} {kind}" for part, kind in REF_PARTS]
        defs += [f"sets__{child} bool" for child, _ in self.children]
        return f"CREATE TEMP TABLE {self.stage} ({', '.join(defs)}) ON COMMIT DELETE ROWS"

    # --- which staged rows may apply ----------------------------------------------------

    def wins(self, s: str = "s") -> str:
        """The live path's rules 1 and 4 as a predicate on a staged row: newer than the
        stored row; a nested child only when its parent now holds this very version (the
        parent won, so its set applies); a lone child not older than its parent's set."""
        terms = [
            f"NOT EXISTS (SELECT 1 FROM {self.table} x WHERE x.source_id = {s}.source_id "
            f"AND x.source_key = {s}.source_key AND {vo('x')} >= {vo(s)})"
        ]
        if self.parent is not None:
            parent_entity, column = self.parent
            parent = crm_model().table_name(parent_entity)
            terms.append(
                f"({s}.depth = 0 OR EXISTS (SELECT 1 FROM {parent} p WHERE "
                f"p.source_id = {s}.source_id AND p.source_key = {s}.{column}__key "
                f"AND p.version_at IS NOT DISTINCT FROM {s}.version_at "
                f"AND p.version_seq IS NOT DISTINCT FROM {s}.version_seq "
                f"AND p.version_event_id = {s}.version_event_id))"
            )
            terms.append(
                f"({s}.depth > 0 OR NOT EXISTS (SELECT 1 FROM child_set_versions c "
                f"JOIN {parent} p ON p.id = c.parent_id WHERE c.child_entity = '{self.entity}' "
                f"AND p.source_id = {s}.source_id AND p.source_key = {s}.{column}__key "
                f"AND {vo('c')} > {vo(s)}))"
            )
        return " AND ".join(terms)

    # --- statements ---------------------------------------------------------------------

    def stubs(self, ref: str, topic_param: str = "$2", now_param: str = "$1") -> str:
        """Placeholders for missing stub targets of the applying rows (not for keys this
        very batch stages for the target, which are parked and released at batch end, as
        the live path does), with their change events."""
        target_entity = self.refs[ref]
        target = crm_model().table_name(target_entity)
        cols = self.stub_columns.get(ref, [])
        ttable = crm_model().table(target_entity)
        picks = "".join(f", (s.{ref}__stub ->> '{c}')::{_type(ttable.c[c])}" for c in cols)
        same_batch = ""
        if target_entity == self.entity:
            same_batch = (
                f"AND NOT EXISTS (SELECT 1 FROM {self.stage} s2 WHERE s2.source_id = "
                f"COALESCE(s.{ref}__src, s.source_id) AND s2.source_key = s.{ref}__key)"
            )
        return (
            f"WITH ins AS (INSERT INTO {target} (source_id, source_table, source_key, extra, "
            f"updated_at{''.join(', ' + c for c in cols)}) "
            f"SELECT DISTINCT ON (COALESCE(s.{ref}__src, s.source_id), s.{ref}__key) "
            f"COALESCE(s.{ref}__src, s.source_id), "
            f"'({target_entity} placeholder)', s.{ref}__key, '{{}}'::jsonb, {now_param}{picks} "
            f"FROM {self.stage} s WHERE s.{ref}__stub IS NOT NULL AND s.{ref}__key IS NOT NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {target} t WHERE t.source_id = "
            f"COALESCE(s.{ref}__src, s.source_id) AND t.source_key = s.{ref}__key) "
            f"{same_batch} AND {self.wins('s')} "
            f"ORDER BY COALESCE(s.{ref}__src, s.source_id), s.{ref}__key "
            "ON CONFLICT (source_id, source_key) DO NOTHING RETURNING *), "
            + _outbox(target_entity, "ins", topic_param, now_param, kind="stub", columns=cols)
            + " SELECT count(*) FROM out"
        )

    def unpark(self) -> str:
        """What earlier versions of the applying stored rows waited for is forgotten."""
        return (
            f"DELETE FROM parked_references p USING {self.stage} s, {self.table} t "
            f"WHERE p.entity = '{self.entity}' AND p.row_id = t.id "
            f"AND t.source_id = s.source_id AND t.source_key = s.source_key AND {self.wins('s')}"
        )

    def merge(self, topic_param: str = "$2", now_param: str = "$1") -> str:
        """Collapse to the newest staged version per key, keep those that win, join each
        reference on the target's natural key, upsert with the version guard, park the
        unresolved references and queue a change event for each row whose content
        changed: one statement."""
        model = crm_model()
        joins = "".join(
            f" LEFT JOIN {model.table_name(target)} r_{ref} ON r_{ref}.source_id = "
            f"COALESCE(src.{ref}__src, src.source_id) AND r_{ref}.source_key = src.{ref}__key"
            for ref, target in self.refs.items()
        )
        ref_ids = "".join(f", r_{ref}.id AS {ref}" for ref in self.refs)
        written = [
            "source_id", "source_table", "source_key", "version_at", "version_seq",
            "version_event_id", "deleted_at", "extra", *self.content, *self.refs,
        ]  # fmt: skip
        select = ", ".join(written) + f", {now_param}"
        assign = ", ".join(f"{c} = excluded.{c}" for c in [*written[1:], "updated_at"])
        parked = " UNION ALL ".join(
            "SELECT m.source_id, m.id, "
            f"'{ref}', res.{ref}__field, '{target}', res.{ref}__key, res.event_id, "
            f"res.{ref}__src, format('%s %s of source %s has not arrived', '{target}', "
            f"quote_literal(res.{ref}__key), quote_literal(COALESCE(res.{ref}__src, m.source_id))) "
            "FROM merged m JOIN res ON res.source_id = m.source_id AND res.source_key = "
            f"m.source_key WHERE res.{ref}__key IS NOT NULL AND m.{ref} IS NULL"
            for ref, target in self.refs.items()
        )
        parked_cte = ""
        if parked:
            parked_cte = (
                ", parked AS (INSERT INTO parked_references (source_id, row_id, column_name, "
                "field, target_entity, target_key, event_id, target_source, reason, entity, "
                f"parked_at) SELECT *, '{self.entity}', {now_param} FROM ({parked}) AS p "
                "RETURNING 1)"
            )
        compared = [*self.content, *self.refs, "deleted_at", "extra"]
        return (
            f"WITH src AS (SELECT DISTINCT ON (s.source_id, s.source_key) s.* FROM {self.stage} "
            f"s WHERE {self.wins('s')} ORDER BY s.source_id, s.source_key, {vo('s')} DESC), "
            f"res AS (SELECT src.*{ref_ids} FROM src{joins}), "
            f"merged AS (INSERT INTO {self.table} AS t ({', '.join(written)}, updated_at) "
            f"SELECT {select} FROM res ON CONFLICT (source_id, source_key) DO UPDATE SET "
            f"{assign} WHERE {vo('t')} < {vo('excluded')} RETURNING t.*)"
            f"{parked_cte}, "
            + _outbox(self.entity, "merged", topic_param, now_param, kind="merge", columns=compared)
            + " SELECT (SELECT count(*) FROM merged), "
            + ("(SELECT count(*) FROM parked)" if parked else "0")
            + ", (SELECT count(*) FROM out)"
        )

    def child_set(
        self, child: str, column: str, topic_param: str = "$2", now_param: str = "$1"
    ) -> str:
        """Parents that won in this batch and carry a set of ``child``: their set versions
        recorded, and the children not in the set tombstoned with the parent's version
        (one UPDATE ... WHERE NOT EXISTS), with their change events."""
        model = crm_model()
        ctable = model.table_name(child)
        cleared = ", ".join(f"{c} = NULL" for c in _content_columns(child) if c != column)
        return (
            f"WITH sets AS (SELECT p.id AS parent_id, p.version_at, p.version_seq, "
            f"p.version_event_id FROM {self.stage} s JOIN {self.table} p ON p.source_id = "
            "s.source_id AND p.source_key = s.source_key AND p.version_at IS NOT DISTINCT FROM "
            "s.version_at AND p.version_seq IS NOT DISTINCT FROM s.version_seq AND "
            f"p.version_event_id = s.version_event_id WHERE s.sets__{child}), "
            "csv AS (INSERT INTO child_set_versions (child_entity, parent_id, version_at, "
            f"version_seq, version_event_id) SELECT '{child}', parent_id, version_at, "
            "version_seq, version_event_id FROM sets ON CONFLICT (child_entity, parent_id) DO "
            "UPDATE SET version_at = excluded.version_at, version_seq = excluded.version_seq, "
            "version_event_id = excluded.version_event_id WHERE "
            f"{vo('child_set_versions')} < {vo('excluded')}), "
            f"dropped AS (UPDATE {ctable} AS t SET deleted_at = COALESCE(p.version_at, "
            f"{now_param}), updated_at = {now_param}, extra = '{{}}'::jsonb, {cleared}, "
            "version_at = p.version_at, version_seq = p.version_seq, version_event_id = "
            f"p.version_event_id FROM sets p WHERE t.{column} = p.parent_id AND t.deleted_at "
            f"IS NULL AND {vo('t')} < {version_order('p', at_missing='infinity')} AND NOT EXISTS "
            f"(SELECT 1 FROM stage_{child} k WHERE k.depth > 0 AND k.source_id = t.source_id "
            "AND k.source_key = t.source_key AND k.version_event_id = p.version_event_id) "
            "RETURNING t.*), "
            f"unparked AS (DELETE FROM parked_references pr USING dropped d WHERE pr.entity = "
            f"'{child}' AND pr.row_id = d.id), "
            + _outbox(child, "dropped", topic_param, now_param, kind="dropped", columns=[])
            + " SELECT count(*) FROM out"
        )


def release(target_entity: str, entity: str, column: str) -> str:
    """Parked references of ``entity.column`` to rows of ``target_entity`` this batch
    staged: deleted, the waiting rows pointed at their targets, one change event each
    with the resolution's version (the row's, its event id extended by ``~now``).
    $1 now, $2 topic, $3 now as text."""
    model = crm_model()
    target = model.table_name(target_entity)
    table = model.table_name(entity)
    return (
        f"WITH rel AS (DELETE FROM parked_references p USING {target} t WHERE "
        f"p.target_entity = '{target_entity}' AND p.entity = '{entity}' AND p.column_name = "
        f"'{column}' AND p.target_field IS NULL AND t.source_id = COALESCE(p.target_source, "
        "p.source_id) AND t.source_key = p.target_key AND EXISTS (SELECT 1 FROM "
        f"stage_{target_entity} s WHERE s.source_id = t.source_id AND s.source_key = "
        "t.source_key) RETURNING p.row_id, t.id AS target_id), "
        f"upd AS (UPDATE {table} AS r SET {column} = rel.target_id, updated_at = $1 FROM rel "
        "WHERE r.id = rel.row_id RETURNING r.*), "
        + _outbox(entity, "upd", "$2", "$1", kind="resolved", columns=[column])
        + " SELECT count(*) FROM out"
    )


def _content_columns(entity: str) -> list[str]:
    from ponte.shared.crm_model import BOOKKEEPING_COLUMNS

    model = crm_model()
    skip = BOOKKEEPING_COLUMNS | model.entity(entity).derived
    return [c.name for c in model.table(entity).columns if c.name not in skip]


LEAN_OUTBOX = False
"""Experiment (``set_merge.py --lean-outbox``), not the live contract: change events
without the row image (``row``), as if the relay read the row when publishing."""


def _outbox(entity: str, rows: str, topic: str, now: str, *, kind: str, columns: list[str]) -> str:
    table = crm_model().table_name(entity)
    """An ``out`` CTE: a change message per row of ``rows`` into the outbox, shaped as
    ``BatchProcessor.change_message`` shapes it. ``kind`` says which rows and which
    ``changed``: ``merge`` (new rows: the non-empty columns; stored ones: those distinct
    from the row before the statement; a delete: ``deleted_at`` when it was live),
    ``stub``, ``dropped``, ``resolved`` (``columns`` changed, the resolution's version)."""
    m = "m"
    version_id = f"{m}.version_event_id"
    where = "TRUE"
    join = ""
    if kind in ("merge", "stub"):
        filled = ", ".join(
            f"CASE WHEN {m}.{c} IS NOT NULL AND {m}.{c}::text <> '{{}}' THEN '{c}' END"
            for c in columns
        )
        changed = f"array_remove(ARRAY[{filled}]::text[], NULL)"
        if kind == "merge":
            distinct = ", ".join(
                f"CASE WHEN {m}.{c} IS DISTINCT FROM o.{c} THEN '{c}' END" for c in columns
            )
            changed = (
                f"CASE WHEN {m}.deleted_at IS NOT NULL THEN ARRAY['deleted_at'] "
                f"WHEN o.id IS NULL THEN {changed} "
                f"ELSE array_remove(ARRAY[{distinct}]::text[], NULL) END"
            )
            # The statement's snapshot: ``o`` is the row as it was before this statement
            # (data-modifying CTEs do not see each other's writes), found by its id.
            join = f" LEFT JOIN {table} o ON o.id = {m}.id"
            row_m = ", ".join(f"{m}.{c}" for c in columns)
            row_o = ", ".join(f"o.{c}" for c in columns)
            where = (
                f"({m}.deleted_at IS NULL AND (o.id IS NULL OR ROW({row_m}) IS DISTINCT FROM "
                f"ROW({row_o}))) OR ({m}.deleted_at IS NOT NULL AND o.id IS NOT NULL AND "
                "o.deleted_at IS NULL)"
            )
    elif kind == "dropped":
        changed = "ARRAY['deleted_at']"
    else:
        changed = "ARRAY[" + ", ".join(f"'{c}'" for c in columns) + "]::text[]"
        version_id = f"{m}.version_event_id || '~' || $3"
    operation = f"CASE WHEN {m}.deleted_at IS NULL THEN 'upsert' ELSE 'delete' END"
    version = (
        "NULL"
        if kind == "stub"
        else f"jsonb_build_object('at', {m}.version_at, 'seq', {m}.version_seq, "
        f"'event_id', {version_id})"
    )
    image = "" if LEAN_OUTBOX else f", 'row', to_jsonb({m})"
    return (
        "out AS (INSERT INTO outbox (topic, key, value, headers, created_at) "
        f"SELECT {topic}, '{entity}/' || {m}.source_id || '/' || {m}.source_key, "
        f"convert_to(jsonb_build_object('entity', '{entity}', 'source_id', {m}.source_id, "
        f"'source_key', {m}.source_key, 'row_id', {m}.id, 'operation', {operation}, "
        f"'changed', to_jsonb({changed}), 'version', {version}{image})::text, "
        f"'UTF8'), jsonb_build_object('ponte-entity', '{entity}', 'ponte-source', "
        f"{m}.source_id, 'ponte-operation', {operation}), {now} "
        f"FROM {rows} {m}{join} WHERE {where} RETURNING 1)"
    )


def entity_sql(entity: str, stub_columns: dict[str, list[str]]) -> EntitySql:
    model = crm_model()
    spec = model.entity(entity)
    refs = dict(spec.references)
    content = [c for c in _content_columns(entity) if c not in refs]
    return EntitySql(
        entity=entity,
        table=spec.table,
        stage=f"stage_{entity}",
        content=content,
        refs=refs,
        parent=spec.parent,
        children=model.children_of(entity),
        stub_columns=stub_columns,
    )
