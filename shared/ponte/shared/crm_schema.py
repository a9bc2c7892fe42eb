"""``ponte migrate``'s second half: bring PostgreSQL's CRM tables to the model
(``ponte.shared.crm_model``), additively, on a live database.

Ponte's own tables (history, outbox, deliveries...) are Alembic migrations, written by
hand as the code changes. The CRM model is a deployment's data, so its tables cannot be:
this module compares the model with the live schema (Alembic's autogenerate comparison,
``compare_metadata``), and applies what is additive (a new entity's table with its foreign
keys, indexes and natural-key unique constraint; a new column with its foreign key; a new
index; a decimal's precision widened) through Alembic's operations.

Anything else would lose or narrow data, and is refused before anything is done, with
the entity and column named: a column or an entity the database has and the model no
longer lists, a type changed or narrowed, a reference pointed elsewhere. The database
keeps what it has; nothing is ever dropped here.

Never half-applied: every change to tables and columns runs in one transaction
(PostgreSQL's DDL is transactional), with a short ``lock_timeout`` so that a long
transaction holding a table makes the migration fail (and change nothing) rather than
queue every writer of that table behind it. A new index on a table that already exists is
built afterwards with ``CREATE INDEX CONCURRENTLY`` (writes continue while it builds); one
that fails is dropped and reported, and the run is not recorded, so running again
finishes it. The model applied is recorded (``crm_model_state``, migration 0013) with its
digest and its description.
"""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ponte.shared.crm_model import CrmModel

LOCK_TIMEOUT = "5s"
"""How long a change waits for a table's lock before the whole migration gives up."""


class SchemaRefused(Exception):
    """The model asks for a change that is not additive; ``problems`` name each one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "ponte migrate changes nothing: "
            + "; ".join(problems)
            + ". Ponte applies additive changes only (new entities, columns, indexes); "
            "put what the model lost back in its file, or change the database by hand first."
        )
        self.problems = problems


class SchemaFailed(Exception):
    """A change PostgreSQL refused midway: everything of that run was rolled back."""


@dataclass
class SchemaPlan:
    """What ``apply_model`` would do, in the order it does it."""

    tables: list[sa.Table] = field(default_factory=list)
    columns: list[tuple[str, sa.Column[Any]]] = field(default_factory=list)
    foreign_keys: list[sa.ForeignKeyConstraint] = field(default_factory=list)
    widened: list[tuple[str, str, Any, Any]] = field(default_factory=list)
    """(table, column, existing type, new type)"""
    indexes: list[sa.Index] = field(default_factory=list)
    """Indexes of tables that already exist (built concurrently)."""
    refused: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.tables or self.columns or self.foreign_keys or self.widened or self.indexes
        )

    def describe(self, model: CrmModel) -> list[str]:
        def entity(table: str) -> str:
            return model.entity_of_table(table) or table

        lines = [f"create entity {entity(t.name)} (table {t.name})" for t in self.tables]
        lines += [f"add column {entity(t)}.{c.name} {c.type}" for t, c in self.columns]
        lines += [
            f"add foreign key {entity(key.parent.name)}.{key.column_keys[0]} "
            f"-> {key.referred_table.name}"
            for key in self.foreign_keys
        ]
        lines += [f"widen {entity(t)}.{c} from {old} to {new}" for t, c, old, new in self.widened]
        lines += [
            f"add index {i.name} on {entity(i.table.name)} ({', '.join(c.name for c in i.columns)})"  # type: ignore[union-attr]
            for i in self.indexes
        ]
        return lines


def plan_changes(
    connection: Connection, model: CrmModel, known_tables: dict[str, str]
) -> SchemaPlan:
    """Compare the live schema with the model. ``known_tables`` are the entity tables a
    previous run recorded (table -> entity): one missing from the model is an entity
    removed."""
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "include_name": _only_model_tables(model, known_tables)},
    )
    plan = SchemaPlan()
    new_tables: set[str] = set()
    with warnings.catch_warnings():
        # Entities that refer to each other cannot be sorted by their foreign keys;
        # ``_apply_transactional`` adds those keys after every table exists.
        warnings.filterwarnings("ignore", "Cannot correctly sort tables", sa.exc.SAWarning)
        diffs = _flatten(compare_metadata(context, model.metadata))
    for diff in diffs:
        _classify(diff, model, known_tables, plan, new_tables)
    return plan


def _only_model_tables(model: CrmModel, known: dict[str, str]) -> Any:
    tables = {spec.table for spec in model.entities.values()} | set(known)

    def include(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ == "table":
            return name in tables
        return True

    return include


def _flatten(diffs: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for diff in diffs:
        # Column modifications come grouped in a list, one tuple per attribute.
        flat += diff if isinstance(diff, list) else [diff]
    return flat


def _classify(
    diff: Any, model: CrmModel, known: dict[str, str], plan: SchemaPlan, new_tables: set[str]
) -> None:
    kind = diff[0]

    def entity(table: str) -> str:
        return model.entity_of_table(table) or known.get(table) or f"(table {table})"

    match kind:
        case "add_table":
            # The model's own Table: the one in the diff is reflected, without indexes.
            plan.tables.append(model.metadata.tables[diff[1].name])
            new_tables.add(diff[1].name)
        case "add_column":
            plan.columns.append((diff[2], diff[3]))
        case "add_fk":
            constraint = diff[1]
            added = {(table, column.name) for table, column in plan.columns}
            # A new table's keys come with it, a new column's with the column.
            if constraint.parent.name not in new_tables and not all(
                (constraint.parent.name, key) in added for key in constraint.column_keys
            ):
                plan.foreign_keys.append(constraint)
        case "add_index":
            if diff[1].table.name not in new_tables:
                plan.indexes.append(diff[1])
        case "add_constraint":
            pass  # a new table's natural key: created with the table
        case "remove_table":
            plan.refused.append(
                f"entity {entity(diff[1].name)} (table {diff[1].name}) is in the database and "
                "no longer in the model: removing it would lose its rows"
            )
        case "remove_column":
            plan.refused.append(
                f"column {entity(diff[2])}.{diff[3].name} is in the database and not in the "
                "model: removing it would lose its values"
            )
        case "remove_fk":
            constraint = diff[1]
            plan.refused.append(
                f"column {entity(constraint.parent.name)}.{constraint.column_keys[0]} refers to "
                f"{constraint.referred_table.name} in the database; the model points it "
                "elsewhere (or nowhere), which would change what its values mean"
            )
        case "modify_type":
            _type_change(diff, entity(diff[2]), plan)
        case "remove_index" | "remove_constraint" | "modify_nullable" | "modify_default":
            pass  # kept as they are: an extra index or constraint loses nothing
        case _:
            plan.refused.append(f"unexpected difference {kind} ({diff!r:.120})")


def _type_change(diff: Any, entity: str, plan: SchemaPlan) -> None:
    _, _, table, column, _, existing, new = diff
    if _widens(existing, new):
        plan.widened.append((table, column, existing, new))
        return
    plan.refused.append(
        f"column {entity}.{column} is {existing} in the database and {new} in the model: "
        "changing a column's type may lose or reinterpret its values; add a new column instead"
    )


def _widens(existing: Any, new: Any) -> bool:
    """A change PostgreSQL makes without rewriting or losing anything: a decimal with more
    integer digits and the same scale, or text without a length limit."""
    if isinstance(existing, sa.Numeric) and isinstance(new, sa.Numeric):
        old_p, old_s, new_p, new_s = existing.precision, existing.scale, new.precision, new.scale
        return None not in (old_p, new_p) and old_s == new_s and new_p >= old_p  # type: ignore[operator]
    if isinstance(existing, sa.String) and isinstance(new, sa.String):
        return new.length is None or (existing.length is not None and new.length >= existing.length)
    return False


def _apply_transactional(connection: Connection, plan: SchemaPlan) -> None:
    operations = Operations(MigrationContext.configure(connection))
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    for table in plan.tables:
        operations.create_table(table.name, *_plain_columns(table), *_unique_keys(table))
        for index in table.indexes:
            columns = [c.name for c in index.columns]
            operations.create_index(str(index.name), table.name, columns)
    for table_name, column in plan.columns:
        operations.add_column(table_name, sa.Column(column.name, column.type, nullable=True))
    # Foreign keys once every table and column exists: two new entities may refer to
    # each other (the model allows reference cycles).
    for table_name, referred, columns, referred_columns in _new_foreign_keys(plan):
        operations.create_foreign_key(None, table_name, referred, columns, referred_columns)
    for table_name, column_name, _, new in plan.widened:
        operations.alter_column(table_name, column_name, type_=new)


ForeignKey = tuple[str, str, list[str], list[str]]
"""(table, referred table, columns, referred columns)"""


def _new_foreign_keys(plan: SchemaPlan) -> list[ForeignKey]:
    """The foreign keys of the plan's new tables, new columns and existing columns."""
    constraints = [
        constraint
        for table in plan.tables
        for constraint in table.constraints
        if isinstance(constraint, sa.ForeignKeyConstraint)
    ]
    found: list[ForeignKey] = [
        (
            constraint.parent.name,
            constraint.referred_table.name,
            list(constraint.column_keys),
            [element.column.name for element in constraint.elements],
        )
        for constraint in [*constraints, *plan.foreign_keys]
    ]
    found += [
        (table_name, key.column.table.name, [column.name], [key.column.name])
        for table_name, column in plan.columns
        for key in column.foreign_keys
    ]
    return found


def _plain_columns(table: sa.Table) -> list[sa.Column[Any]]:
    """The table's columns as new objects, without their index flags and foreign keys
    (created explicitly, so each exists exactly once)."""
    return [
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in table.columns
    ]


def _unique_keys(table: sa.Table) -> list[sa.UniqueConstraint]:
    """The table's natural key (and any other unique constraint), created with it."""
    return [
        sa.UniqueConstraint(*constraint.columns.keys(), name=constraint.name)
        for constraint in table.constraints
        if isinstance(constraint, sa.UniqueConstraint)
    ]


@dataclass
class MigrationResult:
    applied: list[str]
    digest: str


async def apply_model(
    database_url: str, model: CrmModel, *, dry_run: bool = False
) -> MigrationResult:
    """Plan, refuse what is not additive, apply in one transaction, build new indexes
    concurrently, record the model. ``dry_run`` plans and refuses only."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            known = await connection.run_sync(_recorded_tables)
            plan = await connection.run_sync(plan_changes, model, known)
            await connection.rollback()
        if plan.refused:
            raise SchemaRefused(plan.refused)
        described = plan.describe(model)
        if dry_run:
            return MigrationResult(described, model.digest)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_apply_transactional, plan)
        except sa.exc.DBAPIError as error:
            raise SchemaFailed(
                f"PostgreSQL refused a change, so nothing of this run was applied: "
                f"{_first_line(error)}"
                + (
                    " (a table stayed locked longer than the lock timeout: a long transaction "
                    "holds it; run ponte migrate again when it ends)"
                    if "lock timeout" in str(error)
                    else ""
                )
            ) from None
        await _build_indexes(engine, plan.indexes)
        async with engine.begin() as connection:
            await connection.run_sync(_record, model)
        return MigrationResult(described, model.digest)
    finally:
        await engine.dispose()


def _first_line(error: BaseException) -> str:
    return str(getattr(error, "orig", error)).strip().splitlines()[0]


async def _build_indexes(engine: Any, indexes: list[sa.Index]) -> None:
    """``CREATE INDEX CONCURRENTLY`` cannot run in a transaction, and a failed one leaves an
    invalid index behind: dropped here, and the failure reported."""
    for index in indexes:
        columns = ", ".join(c.name for c in index.columns)
        table = index.table.name  # type: ignore[union-attr]
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            try:
                await autocommit.exec_driver_sql(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} ON {table} ({columns})"
                )
            except sa.exc.DBAPIError as error:
                await autocommit.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}")
                raise SchemaFailed(
                    f"index {index.name} on {table} ({columns}) could not be built: "
                    f"{_first_line(error)}; the tables and columns of this run are applied, "
                    "run ponte migrate again to build it"
                ) from None


def _recorded_tables(connection: Connection) -> dict[str, str]:
    if not sa.inspect(connection).has_table("crm_model_state"):
        return {}  # Ponte's own migrations are not at 0013 yet: nothing was recorded
    row = connection.execute(
        sa.text("SELECT model FROM crm_model_state ORDER BY applied_at DESC LIMIT 1")
    ).first()
    if row is None:
        return {}
    described = row[0] if isinstance(row[0], dict) else orjson.loads(row[0])
    return {spec["table"]: entity for entity, spec in described.items()}


def _record(connection: Connection, model: CrmModel) -> None:
    connection.execute(
        sa.text(
            "INSERT INTO crm_model_state (digest, model, files, applied_at) "
            "VALUES (:digest, CAST(:model AS jsonb), CAST(:files AS jsonb), :at) "
            "ON CONFLICT (digest) DO UPDATE SET applied_at = excluded.applied_at, "
            "files = excluded.files"
        ),
        {
            "digest": model.digest,
            "model": orjson.dumps(model.describe()).decode(),
            "files": orjson.dumps(list(model.files)).decode(),
            "at": datetime.now(UTC),
        },
    )


def apply_model_sync(database_url: str, model: CrmModel) -> MigrationResult:
    """For callers without an event loop (``ponte migrate``, the test fixtures)."""
    return asyncio.run(apply_model(database_url, model))


class ModelNotApplied(RuntimeError):
    """The database was migrated to another CRM model than this process runs on."""


async def check_applied(pool: Any, model: CrmModel) -> None:
    """Refuse to work on a database ``ponte migrate`` has not brought to ``model``: rows
    of a column or entity it lacks would fail every batch, one by one, far from the
    cause. Raises ``ModelNotApplied`` saying what to run."""
    row = await pool.fetchrow(
        "SELECT digest, applied_at FROM crm_model_state WHERE digest = $1", model.digest
    )
    if row is not None:
        return
    newest = await pool.fetchrow(
        "SELECT digest, applied_at FROM crm_model_state ORDER BY applied_at DESC LIMIT 1"
    )
    found = (
        f"it was last migrated to model {newest['digest']} at {newest['applied_at']:%Y-%m-%d %H:%M}"
        if newest
        else "no CRM model was ever applied to it"
    )
    raise ModelNotApplied(
        f"the database is not at this process's CRM model {model.digest} "
        f"(files: {', '.join(model.files)}): {found}. Run `ponte migrate` with the same "
        "PONTE_MODEL_FILE first."
    )
