"""Prototype of the set-based write path's PostgreSQL side (issue #16), against the live
repository on the same rows in the same run; prints the figures.

    .venv/bin/python bench/prototypes/set_merge.py                   # 6,000 events, 3 repeats
    .venv/bin/python bench/prototypes/set_merge.py --events 25000 --repeat 3 \\
        --batch-sizes 500,2000,10000

What runs, on a throwaway PostgreSQL (``ponte.shared.embedded``, migrated; no broker):

1. The bench corpus (``bench/transform_data.py``) is serialised as the raw topic holds it,
   then decoded and normalised once (``Decoder.decode``, the live path): the per-stage
   figures of decode (strict JSON + pydantic; orjson alone for comparison) and normalise
   come from that pass. Three phases of input: the corpus; the corpus re-sent (same
   times, later offsets: by the version rule every row is rewritten, its version_seq
   moves, and no change event may come out); and changes (10% of orders newer with their last
   item dropped and a price changed, 2% deleted, some re-sent older in the same batch).
2. **Baseline**: per batch, one transaction: ``BatchApplier.apply`` (the live
   repository) and ``add_messages`` of ``BatchProcessor.change_message``s (the outbox).
3. **Set path**: per batch, one transaction: each entity's rows, in the model's write
   order, COPYed (``copy_records_to_table``) into a temp staging table, then set
   statements (``set_sql``): placeholders, unpark, one merge per entity (collapse to the
   newest, versioned ``ON CONFLICT ... DO UPDATE ... WHERE``, references by a join on
   natural keys, parked rows and outbox rows in the same statement, change events only
   for rows whose content changed), parked release, child sets.
4. Both start from empty tables (TRUNCATE, never analysed, as the bench does). After the
   three phases the final tables are compared: every row of every entity (references as
   the target's natural key, versions, tombstones, extra), the parked set, the child set
   versions, and the change events (key, operation, changed columns, version). A
   mismatch is printed and the script exits 1: a fast wrong path must not pass.

Measured per run: wall time of phase 1 (rows/s = CRM rows after it / seconds), the
client's CPU (``time.process_time``) and the PostgreSQL backend's CPU (its
``/proc/<pid>/schedstat``: nanoseconds on CPU, so other load barely distorts it), split by
statement kind. The staging tuples are built from the normalised records before the
clock (``compiled_normalize.py`` measures producing them directly), and that build is
timed on its own. Medians over ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "prototypes"))

import set_sql  # type: ignore[import-not-found]  # noqa: E402 - the path above
from set_sql import EntitySql, entity_sql, release  # noqa: E402
from transform_data import generate  # type: ignore[import-not-found]  # noqa: E402

from ponte.shared import db, strict_json  # noqa: E402
from ponte.shared.crm_model import crm_model  # noqa: E402
from ponte.shared.embedded import EmbeddedPostgres  # noqa: E402
from ponte.shared.events import Operation, RawEvent  # noqa: E402
from ponte.shared.settings import Settings  # noqa: E402
from ponte.transform.app import tune_garbage_collector  # noqa: E402
from ponte.transform.decode import Decoder  # noqa: E402
from ponte.transform.normalize import NormalizedRecord  # noqa: E402
from ponte.transform.outbox import add_messages  # noqa: E402
from ponte.transform.processor import BatchProcessor  # noqa: E402
from ponte.transform.repository.applier import BatchApplier  # noqa: E402

PLAN_CACHE_MODE = "force_custom_plan"
INDEX_PROBES = False
"""``--index-probes``: the set path's transaction turns hash and merge joins off (SET
LOCAL), so each staged key is an index probe instead of a scan of the whole table: on
tables never analysed the planner hashes the whole target table in every statement of
every batch, which grows with the table (measured: quadratic in a backlog)."""
BOOKKEEPING = ("parked_references", "outbox", "child_set_versions", "transform_rejections")


# --- CPU of the backend ------------------------------------------------------------------


def backend_ns(pid: int) -> int:
    """Nanoseconds the backend ``pid`` has run on a CPU (schedstat: exact, not ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


@dataclass
class Meter:
    """Client CPU and backend CPU by bucket (a statement kind, a stage)."""

    pid: int
    client: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    backend: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def bucket(self, name: str) -> Iterator[None]:
        c0, b0 = time.process_time(), backend_ns(self.pid)
        try:
            yield
        finally:
            self.client[name] += time.process_time() - c0
            self.backend[name] += (backend_ns(self.pid) - b0) / 1e9


# --- input -------------------------------------------------------------------------------


def changes_phase(events: list[RawEvent], seed: int) -> list[RawEvent]:
    """Phase 3: newer versions of some orders (last item dropped, a price changed), deletes
    of others, some originals re-sent after the change (older: they must lose, in the
    same batch as the newer one or later), and older versions carrying an unseen item."""
    rng = random.Random(seed)
    later = max(e.occurred_at for e in events if e.occurred_at) + timedelta(days=1)
    out: list[RawEvent] = []
    for index, event in enumerate(e for e in events if e.topic == "Pedido"):
        draw = rng.random()
        if draw < 0.02:
            payload: dict[str, Any] = {"codigo": event.payload["codigo"]}
            operation = Operation.DELETE
        elif draw < 0.12:
            payload = copy.deepcopy(event.payload)
            payload["Itens pedido"] = payload["Itens pedido"][:-1]
            payload["Itens pedido"][0]["preco"] = "9.999,99"
            operation = Operation.UPSERT
        elif draw < 0.14:
            # An older version than the stored one, carrying an item never seen: it loses
            # as a whole, so that item must not appear (a nested child applies only with
            # its winning parent).
            older = copy.deepcopy(event.payload)
            older["Itens pedido"].append({**older["Itens pedido"][0], "seq": 99})
            out.append(
                event.model_copy(
                    update={
                        "event_id": f"{event.event_id}/v0",
                        "source_event_id": f"older-{index}",
                        "occurred_at": (event.occurred_at or later) - timedelta(days=2),
                        "payload": older,
                    }
                )
            )
            continue
        else:
            continue
        out.append(
            event.model_copy(
                update={
                    "event_id": f"{event.event_id}/v2",
                    "source_event_id": f"change-{index}",
                    "occurred_at": later + timedelta(seconds=index),
                    "operation": operation,
                    "payload": payload,
                }
            )
        )
        if draw < 0.04 or 0.10 < draw < 0.12:
            out.append(event)  # the older original again, after its successor
    return out


@dataclass
class Corpus:
    phases: list[list[list[NormalizedRecord]]]
    """Per phase, per event, its records (in topic order)."""
    stage_seconds: dict[str, float]
    stage_events: int


def decode_corpus(events: list[RawEvent], phases: list[list[RawEvent]]) -> Corpus:
    """Every phase decoded and normalised once by the live decoder; the first phase's
    decode split into its stages (timed: CPU of this process)."""
    decoder = Decoder(None)
    seconds: dict[str, float] = {}
    raw = [[e.model_dump_json().encode() for e in phase] for phase in phases]
    first = raw[0]
    t = time.process_time()
    for value in first:
        orjson.loads(value)
    seconds["orjson.loads"] = time.process_time() - t
    t = time.process_time()
    docs = [strict_json.loads(v, max_depth=strict_json.RAW_EVENT_DEPTH) for v in first]
    seconds["strict_json.loads"] = time.process_time() - t
    t = time.process_time()
    parsed = [RawEvent.model_validate(d) for d in docs]
    seconds["RawEvent.model_validate"] = time.process_time() - t
    from ponte.transform.decode import decode_event

    mapping = decoder.mapping(parsed[0].source_kind, parsed[0].source_id)
    t = time.process_time()
    for offset, event in enumerate(parsed):
        decode_event(event, mapping, offset)
    seconds["normalize (decode_event)"] = time.process_time() - t
    out = []
    offset = 0
    for phase in raw:
        decoded = []
        for value in phase:
            result = decoder.decode(value, offset)
            offset += 1
            if result.rejection is not None:
                raise SystemExit(f"corpus event rejected: {result.rejection.reason}")
            decoded.append(result.records)
        out.append(decoded)
    return Corpus(out, seconds, len(first))


def batches(phase: list[list[NormalizedRecord]], size: int) -> Iterator[list[NormalizedRecord]]:
    for start in range(0, len(phase), size):
        yield [r for records in phase[start : start + size] for r in records]


# --- staging tuples ----------------------------------------------------------------------


def stub_columns(corpus: Corpus) -> dict[str, dict[str, list[str]]]:
    """Per entity and reference column, the target columns its placeholders fill."""
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for phase in corpus.phases:
        for records in phase:
            for record in records:
                for row in record.rows:
                    for ref in row.references:
                        if ref.on_missing == "stub":
                            found[row.entity][ref.column] |= set(ref.stub_values)
    return {e: {c: sorted(v) for c, v in refs.items()} for e, refs in found.items()}


def stage_rows(
    specs: dict[str, EntitySql], records: list[NormalizedRecord], now: datetime
) -> dict[str, list[tuple[Any, ...]]]:
    """A batch's rows as COPY tuples per entity, in each staging table's column order."""
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for record in records:
        version = record.version
        deleting = record.operation is Operation.DELETE
        for row in record.rows:
            spec = specs[row.entity]
            delete_row = deleting and row.depth == 0
            values = row.values
            refs = {ref.column: ref for ref in row.references}
            cols: list[Any] = [
                record.source_id, row.source_table, row.source_key, version.at, version.seq,
                version.event_id, record.event_id, row.depth,
                (version.at or now) if delete_row else None,
                {} if delete_row else row.extra,
            ]  # fmt: skip
            if delete_row:
                cols += [None] * len(spec.content)
            else:
                cols += [values.get(c) for c in spec.content]
            for column in spec.refs:
                ref = refs.get(column)
                if ref is None:
                    cols += [None, None, None, None]
                else:
                    cols += [
                        ref.target_key,
                        ref.target_source,
                        ref.field,
                        ref.stub_values if ref.on_missing == "stub" else None,
                    ]
            carried = {s.entity for s in row.child_sets}
            cols += [delete_row or child in carried for child, _ in spec.children]
            out[row.entity].append(tuple(cols))
    return out


# --- the two write paths -----------------------------------------------------------------


async def apply_baseline(
    connection: asyncpg.Connection,
    processor: BatchProcessor,
    records: list[NormalizedRecord],
    meter: Meter,
) -> None:
    now = datetime.now(UTC)
    async with connection.transaction():
        with meter.bucket("repository (BatchApplier.apply)"):
            result = await BatchApplier(connection, now).apply(records)
        with meter.bucket("outbox (change_message + add_messages)"):
            await add_messages(connection, [processor.change_message(c) for c in result.changes])


async def apply_sets(
    connection: asyncpg.Connection,
    specs: dict[str, EntitySql],
    staged: dict[str, list[tuple[Any, ...]]],
    topic: str,
    meter: Meter,
) -> None:
    now = datetime.now(UTC)
    order = [e for e in crm_model().entities if e in staged]
    async with connection.transaction():
        if INDEX_PROBES:
            await connection.execute("SET LOCAL enable_hashjoin = off")
            await connection.execute("SET LOCAL enable_mergejoin = off")
        for entity in order:
            spec = specs[entity]
            with meter.bucket("COPY into staging"):
                await connection.copy_records_to_table(
                    spec.stage, records=staged[entity], columns=spec.columns
                )
            with meter.bucket("placeholders (stubs)"):
                for ref in spec.stub_columns:
                    await connection.fetchval(spec.stubs(ref), now, topic)
            with meter.bucket("unpark"):
                await connection.execute(spec.unpark())
            with meter.bucket("merge + parked + outbox"):
                await connection.fetchrow(spec.merge(), now, topic)
        with meter.bucket("parked release"):
            for target in order:
                for entity, spec in specs.items():
                    for column, to in spec.refs.items():
                        if to == target:
                            await connection.fetchval(
                                release(target, entity, column), now, topic, now.isoformat()
                            )
        with meter.bucket("child sets"):
            for entity in order:
                spec = specs[entity]
                for child, column in spec.children:
                    await connection.fetchval(spec.child_set(child, column), now, topic)


async def create_stages(connection: asyncpg.Connection, specs: dict[str, EntitySql]) -> None:
    for spec in specs.values():
        await connection.execute(spec.create_stage())


# --- comparison --------------------------------------------------------------------------


async def snapshot(connection: asyncpg.Connection) -> dict[str, Any]:
    """The final state without ids and write times: rows (references as the target's
    natural key), parked set, child set versions, change events."""
    model = crm_model()
    state: dict[str, Any] = {}
    for entity, spec in model.entities.items():
        table = model.table(entity)
        exprs = []
        for column in table.columns:
            name = column.name
            if name in ("id", "updated_at"):
                continue
            target = spec.references.get(name)
            if target is None:
                exprs.append(f"t.{name}::text")
            else:
                exprs.append(
                    f"(SELECT r.source_id || '/' || r.source_key FROM "
                    f"{model.table_name(target)} r WHERE r.id = t.{name})"
                )
        rows = await connection.fetch(f"SELECT {', '.join(exprs)} FROM {spec.table} t")
        state[entity] = Counter(tuple(r) for r in rows)
    parked = []
    for row in await connection.fetch("SELECT * FROM parked_references"):
        key = await connection.fetchval(
            f"SELECT source_key FROM {model.table_name(row['entity'])} WHERE id = $1",
            row["row_id"],
        )
        parked.append(
            (
                row["source_id"],
                row["entity"],
                key,
                row["column_name"],
                row["field"],
                row["target_entity"],
                row["target_key"],
                row["event_id"],
                row["target_source"],
                row["reason"],
            )
        )
    state["parked_references"] = Counter(parked)
    sets = []
    for row in await connection.fetch("SELECT * FROM child_set_versions"):
        parent = model.parent_of(row["child_entity"])
        assert parent is not None
        key = await connection.fetchval(
            f"SELECT source_key FROM {model.table_name(parent[0])} WHERE id = $1",
            row["parent_id"],
        )
        sets.append(
            (
                row["child_entity"],
                key,
                row["version_at"],
                row["version_seq"],
                row["version_event_id"],
            )
        )
    state["child_set_versions"] = Counter(sets)
    events = []
    for row in await connection.fetch("SELECT key, value FROM outbox"):
        value = json.loads(bytes(row["value"]))
        version = value["version"]
        if version is not None:
            at = datetime.fromisoformat(version["at"]).timestamp() if version["at"] else None
            version = (at, version["seq"], (version["event_id"] or "").split("~")[0],
                       "~" in (version["event_id"] or ""))  # fmt: skip
        events.append((row["key"], value["operation"], tuple(sorted(value["changed"])), version))
    state["change events"] = Counter(events)
    return state


def differences(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    found = []
    for name, rows in baseline.items():
        other = candidate[name]
        if rows != other:
            missing = rows - other
            extra = other - rows
            found.append(
                f"{name}: {sum(missing.values())} only in the baseline, {sum(extra.values())} "
                f"only in the set path; e.g. baseline {next(iter(missing), None)!r} / "
                f"set {next(iter(extra), None)!r}"
            )
    return found


# --- runs --------------------------------------------------------------------------------


async def reset(connection: asyncpg.Connection) -> None:
    """Empty tables in the state of a fresh ``ponte migrate``: never analysed. TRUNCATE
    alone keeps the column statistics an earlier run's autovacuum took on the full
    tables, and with those the set path's joins were planned badly in every run after
    the first (measured: 76 µs/row in the unpark statement, 2,800 rows/s at 10,000-event
    batches), so each run would measure the one before it. The embedded cluster's user is
    a superuser, which may clear them."""
    tables = [spec.table for spec in crm_model().entities.values()] + list(BOOKKEEPING)
    await connection.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    await connection.execute(
        "DELETE FROM pg_statistic WHERE starelid = ANY($1::regclass[])", tables
    )


async def crm_rows(connection: asyncpg.Connection) -> int:
    total = 0
    for spec in crm_model().entities.values():
        total += await connection.fetchval(f"SELECT count(*) FROM {spec.table}")
    return total


async def run_once(
    settings: Settings,
    corpus: Corpus,
    specs: dict[str, EntitySql],
    method: str,
    batch_size: int,
    *,
    check: bool,
) -> dict[str, Any]:
    # The service's pool settings (``db.create_pool``): custom plans for every execution.
    connection = await asyncpg.connect(
        settings.asyncpg_dsn, server_settings={"plan_cache_mode": PLAN_CACHE_MODE}
    )
    await db.init_connection(connection)
    try:
        await reset(connection)
        if method == "sets":
            await create_stages(connection, specs)
        pid = await connection.fetchval("SELECT pg_backend_pid()")
        processor = BatchProcessor(None, settings)  # type: ignore[arg-type] # change_message only
        result: dict[str, Any] = {"method": method, "batch_size": batch_size, "phases": []}
        for index, phase in enumerate(corpus.phases):
            if index > 0 and not check:
                break
            meter = Meter(pid)
            prepared = list(batches(phase, batch_size))
            staged: list[dict[str, list[tuple[Any, ...]]]] = []
            build_s = 0.0
            if method == "sets":
                t = time.process_time()
                now = datetime.now(UTC)
                staged = [stage_rows(specs, records, now) for records in prepared]
                build_s = time.process_time() - t
            wall0 = time.perf_counter()
            for position, records in enumerate(prepared):
                if method == "sets":
                    await apply_sets(connection, specs, staged[position],
                                     settings.changes_topic, meter)  # fmt: skip
                else:
                    await apply_baseline(connection, processor, records, meter)
            wall = time.perf_counter() - wall0
            result["phases"].append(
                {
                    "wall_s": wall,
                    "client_s": dict(meter.client),
                    "backend_s": dict(meter.backend),
                    "stage_build_s": build_s,
                    "rows_after": await crm_rows(connection),
                    "outbox_after": await connection.fetchval("SELECT count(*) FROM outbox"),
                }
            )
        if check:
            result["snapshot"] = await snapshot(connection)
        return result
    finally:
        await connection.close()


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of phase 1: rows/s and µs per row of client and backend CPU."""
    phase = [r["phases"][0] for r in runs]
    rows = phase[0]["rows_after"]
    return {
        "rows": rows,
        "rows_per_s": statistics.median(rows / p["wall_s"] for p in phase),
        "wall_us": statistics.median(1e6 * p["wall_s"] / rows for p in phase),
        "client_us": statistics.median(1e6 * sum(p["client_s"].values()) / rows for p in phase),
        "backend_us": statistics.median(1e6 * sum(p["backend_s"].values()) / rows for p in phase),
        "build_us": statistics.median(1e6 * p["stage_build_s"] / rows for p in phase),
        "outbox": phase[0]["outbox_after"],
    }


def buckets(runs: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    phase = [r["phases"][0] for r in runs]
    rows = phase[0]["rows_after"]
    names = list(phase[0]["backend_s"])
    return [
        (
            name,
            statistics.median(1e6 * p["client_s"].get(name, 0) / rows for p in phase),
            statistics.median(1e6 * p["backend_s"].get(name, 0) / rows for p in phase),
        )
        for name in names
    ]


async def drop_foreign_keys(settings: Settings) -> None:
    """Experiment: every foreign key of the CRM tables dropped (their checks are per-row
    triggers that lock the referenced row: a cost the set path's join already paid)."""
    connection = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        tables = [spec.table for spec in crm_model().entities.values()]
        rows = await connection.fetch(
            "SELECT conrelid::regclass::text AS t, conname FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid::regclass::text = ANY($1::text[])",
            tables,
        )
        for row in rows:
            await connection.execute(f'ALTER TABLE {row["t"]} DROP CONSTRAINT "{row["conname"]}"')
        print(f"experiment: {len(rows)} foreign keys dropped", flush=True)
    finally:
        await connection.close()


def print_stages(corpus: Corpus, rows: int) -> None:
    print("\ndecode stages over phase 1 (CPU of this process, µs per CRM row / per event):")
    for name, seconds in corpus.stage_seconds.items():
        per_row = 1e6 * seconds / rows
        per_event = 1e6 * seconds / corpus.stage_events
        print(f"  {name:<28} {per_row:6.1f} µs/row {per_event:7.1f} µs/event")


def measure_size(
    settings: Settings, corpus: Corpus, specs: dict[str, EntitySql], size: int, repeat: int
) -> bool:
    """Both paths ``repeat`` times at one batch size (interleaved, so that a busy spell of
    the shared machine hits both); prints the figures; False on a mismatch."""
    print(f"\nbatch size {size:,} events", flush=True)
    results: dict[str, list[dict[str, Any]]] = {"baseline": [], "sets": []}
    for index in range(repeat):
        for method in ("baseline", "sets"):
            run = asyncio.run(run_once(settings, corpus, specs, method, size, check=index == 0))
            results[method].append(run)
            p = run["phases"][0]
            print(
                f"  {method:<8} run {index + 1}: {p['rows_after'] / p['wall_s']:>8,.0f} rows/s "
                f"wall {p['wall_s']:.2f}s client {sum(p['client_s'].values()):.2f}s "
                f"pg {sum(p['backend_s'].values()):.2f}s",
                flush=True,
            )
    problems = differences(results["baseline"][0]["snapshot"], results["sets"][0]["snapshot"])
    for problem in problems:
        print(f"  MISMATCH {problem}")
    if not problems:
        print("  final tables, parked set, child set versions and change events: equal")
    for method, runs in results.items():
        print_method(method, runs)
    return not problems


def print_method(method: str, runs: list[dict[str, Any]]) -> None:
    s = summarise(runs)
    built = f"  (+ staging tuples {s['build_us']:.1f} µs/row)" if method == "sets" else ""
    print(
        f"  {method:<8} median {s['rows_per_s']:>8,.0f} rows/s  wall {s['wall_us']:6.1f} "
        f"µs/row  client {s['client_us']:6.1f} µs/row  PostgreSQL {s['backend_us']:6.1f} "
        f"µs/row{built}  outbox {s['outbox']:,}"
    )
    for name, client, backend in buckets(runs):
        print(f"      {name:<40} client {client:6.1f}  PostgreSQL {backend:6.1f} µs/row")
    for label, index in (("phase 2 (re-sent corpus)", 1), ("phase 3 (changes)", 2)):
        p = runs[0]["phases"][index]
        print(
            f"      {label:<40} wall {p['wall_s']:.2f}s client "
            f"{sum(p['client_s'].values()):.2f}s PostgreSQL {sum(p['backend_s'].values()):.2f}s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-sizes", default="500,2000,10000")
    parser.add_argument("--seed", type=int, default=20241114)
    parser.add_argument(
        "--plan-cache-mode",
        default=PLAN_CACHE_MODE,
        help="PostgreSQL plan_cache_mode of both paths' connection (the service forces "
        "custom plans; 'auto' lets the set statements settle on generic ones).",
    )
    parser.add_argument(
        "--lean-outbox",
        action="store_true",
        help="Experiment: the set path's change events without the row image (the "
        "comparison does not read the image, so it still applies).",
    )
    parser.add_argument(
        "--drop-foreign-keys",
        action="store_true",
        help="Experiment (both paths): the CRM tables' foreign-key constraints dropped after "
        "migrating, to measure what their per-row checks cost; not a proposal as such.",
    )
    parser.add_argument(
        "--index-probes",
        action="store_true",
        help="The set path's statements join by index probes (hash and merge joins off in "
        "its transaction) instead of the planner's choice on never-analysed tables.",
    )
    args = parser.parse_args()
    # The collector tuned as the service tunes it (start-up heap frozen, young threshold
    # 100,000), so that neither path pays for collections the service does not make.
    tune_garbage_collector()
    globals()["PLAN_CACHE_MODE"] = args.plan_cache_mode
    globals()["INDEX_PROBES"] = args.index_probes
    set_sql.LEAN_OUTBOX = args.lean_outbox
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    dataset = generate(args.events, args.seed)
    phases = [dataset.events, dataset.events, changes_phase(dataset.events, args.seed)]
    print(
        f"corpus: {len(dataset.events):,} events -> {dataset.total_rows:,} CRM rows; "
        f"phase 3: {len(phases[2]):,} change events",
        flush=True,
    )
    corpus = decode_corpus(dataset.events, phases)
    specs = {
        entity: entity_sql(entity, stub_columns(corpus).get(entity, {}))
        for entity in crm_model().entities
    }
    print_stages(corpus, dataset.total_rows)
    failed = False
    with tempfile.TemporaryDirectory(prefix="ponte-set-merge-") as scratch:
        database = EmbeddedPostgres(Path(scratch))
        database.start()
        try:
            settings = Settings(_env_file=None, database_url=database.url, log_level="WARNING")
            db.migrate(settings)
            if args.drop_foreign_keys:
                asyncio.run(drop_foreign_keys(settings))
            for size in sizes:
                failed |= not measure_size(settings, corpus, specs, size, args.repeat)
        finally:
            database.stop(mode="immediate")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
