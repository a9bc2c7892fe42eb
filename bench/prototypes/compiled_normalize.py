"""Prototype of the set-based write path's Python side (issue #16): each TableMapping
compiled once into a function (generated source, ``exec``) that turns a decoded row into
COPY tuples in the staging tables' column order (``set_sql``), with the same parsing
(``FieldMapping.convert``: ``ponte.shared.parsers``). Measured against
``normalize_record`` on the bench corpus, outputs checked equal.

    .venv/bin/python bench/prototypes/compiled_normalize.py              # 25,000 events
    .venv/bin/python bench/prototypes/compiled_normalize.py --events 6000 --repeat 5

The compiled function is a fast path, not a second normaliser: whatever it does not
handle exactly as ``normalize`` does raises ``Fallback`` and the record goes the
reference way (``normalize_record``, then ``set_merge.stage_rows``), which also gives
every refusal its field path and reason. It falls back on: a code table, a skip rule
that matches, a delete, a ``$code`` object or a list/object where a scalar is mapped, a
value a parser refuses, a missing key, parent or required field, an unknown field that
looks like a child table, duplicate child keys, a ``by:`` or cross-source reference, and
``on_code``/``values`` fields it was not generated for. The output check covers every
event of the corpus; the fallbacks are counted and printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "prototypes"))

from set_merge import stage_rows  # type: ignore[import-not-found]  # noqa: E402 - the path above
from set_sql import EntitySql, entity_sql  # type: ignore[import-not-found]  # noqa: E402
from transform_data import generate  # type: ignore[import-not-found]  # noqa: E402

from ponte.shared import strict_json  # noqa: E402
from ponte.shared.crm_model import crm_model  # noqa: E402
from ponte.shared.events import Operation, RawEvent  # noqa: E402
from ponte.shared.mapping import Mapping, TableMapping, mapping_for  # noqa: E402
from ponte.shared.parsers import ParseError  # noqa: E402
from ponte.transform.app import tune_garbage_collector  # noqa: E402
from ponte.transform.normalize import _code_object, normalize_record, version_id  # noqa: E402

Out = dict[str, list[tuple[Any, ...]]]
RowFunction = Callable[..., str]


class Fallback(Exception):
    """The fast path does not handle this row exactly: normalise it the reference way."""


def _blank(value: Any) -> bool:
    return value is None or (type(value) is str and not value.strip())


def _key_part(value: Any) -> str:
    """``normalize._key_part``, falling back instead of refusing."""
    if value is None or type(value) in (dict, list) or (type(value) is str and not value.strip()):
        raise Fallback
    return str(value).strip()


def _code_of(value: dict[str, Any]) -> tuple[str, str]:
    """A ``$code`` object's (list, key), as ``normalize._code_object`` reads it."""
    try:
        code = _code_object(value)
    except ParseError:
        raise Fallback from None
    if code is None:
        raise Fallback
    return code


class Compiler:
    """Generates one function per table of a mapping (children call their own)."""

    def __init__(self, mapping: Mapping, specs: dict[str, EntitySql]) -> None:
        self.mapping = mapping
        self.specs = specs
        self.functions: dict[str, RowFunction] = {}
        self.sources: dict[str, str] = {}

    def function(self, table_name: str) -> RowFunction:
        if table_name not in self.functions:
            self._compile(table_name)
        return self.functions[table_name]

    def _compile(self, table_name: str) -> None:
        table = self.mapping.tables[table_name]
        if table.code_table is not None or table.version is not None:
            self.functions[table_name] = _always_fallback
            return
        scope: dict[str, Any] = {
            "Fallback": Fallback,
            "ParseError": ParseError,
            "_blank": _blank,
            "_key_part": _key_part,
            "_code_of": _code_of,
            "table": table,
        }
        source = self._source(table_name, table, scope)
        self.sources[table_name] = source
        exec(compile(source, f"<compiled {table_name}>", "exec"), scope)
        self.functions[table_name] = scope["row"]

    def _source(self, table_name: str, table: TableMapping, scope: dict[str, Any]) -> str:
        spec = self.specs[table.entity]
        lines = [
            "def row(data, source_id, at, seq, version_event, record_event, depth, parent_key,"
            " path, out, unmapped):",
            "    if type(data) is not dict: raise Fallback",
        ]
        if table.skip:
            lines.append("    if table.skip_rule(data) is not None: raise Fallback")
        parts = [f"_key_part(data.get({name!r}))" for name in table.key]
        lines.append(f"    own = {' + chr(58) + '.join(parts)}")
        known = set(table.key) | set(table.computed_from) | set(table.filtered_by)
        columns: dict[str, str] = {}
        refs: dict[str, list[str]] = {}
        if table.parent is not None:
            parent_column = table.parent.column
            if table.parent.field is not None:
                known.add(table.parent.field)
            lines += [
                "    if parent_key is None:",
                f"        parent_key = _key_part(data.get({table.parent.field!r}))"
                if table.parent.field
                else "        raise Fallback",
                "    key = parent_key + '/' + own",
            ]
            refs[parent_column] = ["parent_key", "None", "path", "None"]
        else:
            lines += ["    if parent_key is not None: raise Fallback", "    key = own"]
        children: dict[str, str] = {}
        for index, name in enumerate(table.fields):
            field = table.field(name)
            assert field is not None
            known.add(name)
            if field.ignore or field.column is None:
                continue
            var = f"v{index}"
            scope[f"convert{index}"] = field.convert
            lines.append(f"    {var} = data.get({name!r})")
            lines += self._field(name, field, index, var, columns, refs)
        for name, child in self.mapping.tables.items():
            if child.parent is not None and child.parent.entity == table.entity:
                if name in known:
                    continue
                known.add(name)
                children[child.entity] = name
                scope[f"child_{child.entity}"] = lambda *a, n=name: self.function(n)(*a)
                lines += [
                    f"    c = data.get({name!r})",
                    f"    sets_{child.entity} = c is not None",
                    "    if c is not None:",
                    "        if type(c) is not list: raise Fallback",
                    "        keys = set()",
                    "        for i, item in enumerate(c):",
                    f"            keys.add(child_{child.entity}(item, source_id, at, seq,"
                    " version_event, record_event,"
                    f" depth + 1, key, path + {'.' + name!r} + '[' + str(i) + ']', out, unmapped))",
                    "        if len(keys) != len(c): raise Fallback",
                ]
        for column, rule in table.computed.items():
            scope[f"computed_{column}"] = rule.compute
            lines += [
                "    try:",
                f"        col_{column} = computed_{column}(data)",
                "    except ParseError:",
                "        raise Fallback from None",
            ]
            columns[column] = f"col_{column}"
        scope["known"] = frozenset(known)
        scope["table_name"] = table_name
        lines += [
            "    extra = {}",
            "    if len(data) > len(known) or not known.issuperset(data):",
            "        for name in data.keys() - known:",
            "            value = data[name]",
            "            if type(value) is list and value and all(type(v) is dict for v in value):",
            "                raise Fallback",
            "            if type(value) is dict and 'rows' in value: raise Fallback",
            "            extra[name] = value",
            "            unmapped.add((table_name, name))",
        ]
        values = [
            "source_id", repr(table_name), "key", "at", "seq", "version_event", "record_event",
            "depth", "None", "extra",
        ]  # fmt: skip
        values += [columns.get(c, "None") for c in spec.content]
        for column in spec.refs:
            expression = refs.get(column)
            values += expression or ["None", "None", "None", "None"]
        values += [f"sets_{child}" if child in children else "False" for child, _ in spec.children]
        lines.append(f"    out[{table.entity!r}].append(({', '.join(values)},))")
        lines.append("    return key")
        return "\n".join(lines)

    def _field(
        self,
        name: str,
        field: Any,
        index: int,
        var: str,
        columns: dict[str, str],
        refs: dict[str, list[str]],
    ) -> list[str]:
        """Lines that read one field into a column value or a reference tuple."""
        column = field.column
        lines: list[str] = []
        unpacked = [f"r{index}{part}" for part in ("k", "s", "f", "t")]
        names = ", ".join(unpacked)
        path = f"path + {'.' + name!r}"
        if field.by is not None or field.source is not None or field.values is not None:
            return [f"    if {var} is not None: raise Fallback"]
        if field.is_code:
            # A plain key of the field's list, or a $code object naming its own list.
            lines += [
                f"    if type({var}) is dict:",
                f"        lk = _code_of({var})",
                f"        {names} = (lk[0] + ':' + lk[1], None, {path}, "
                "{'list_name': lk[0], 'code': lk[1]})",
                f"    elif _blank({var}):",
                f"        {names} = (None, None, None, None)",
                "    else:",
                f"        k = _key_part({var})",
                f"        {names} = ({field.code!r} + ':' + k, None, {path}, "
                f"{{'list_name': {field.code!r}, 'code': k}})",
            ]
            refs[column] = unpacked
            return lines
        if field.reference is not None:
            stub = "{'code': str(" + var + ").strip()}" if field.on_missing == "stub" else "None"
            has_code = "code" in crm_model().entity(field.reference).columns
            if field.on_missing == "stub" and not has_code:
                stub = "{}"
            lines += [
                f"    if _blank({var}):",
                f"        {names} = (None, None, None, None)",
                "    else:",
                f"        {names} = (_key_part({var}), None, {path}, {stub})",
            ]
            refs[column] = unpacked
            return lines
        lines += [
            f"    if type({var}) is dict or type({var}) is list: raise Fallback",
            f"    if {var} is None:",
            f"        col{index} = None",
            "    else:",
            "        try:",
            f"            col{index} = convert{index}({var})",
            "        except ParseError:",
            "            raise Fallback from None",
        ]
        if field.default is not None:
            lines += [
                f"    if _blank({var}): col{index} = convert{index}({field.default!r})",
            ]
        if field.required:
            lines.append(f"    if col{index} is None: raise Fallback")
        columns[column] = f"col{index}"
        return lines


def _always_fallback(*args: Any) -> str:
    raise Fallback


def compiled_rows(compiler: Compiler, event: RawEvent, offset: int, out: Out) -> bool:
    """The event's COPY tuples into ``out`` by the compiled path; False (``out`` left as
    it was) when the record must take the reference path."""
    if event.operation is not Operation.UPSERT:
        return False
    mark = {entity: len(rows) for entity, rows in out.items()}
    try:
        compiler.function(event.topic)(
            event.payload,
            event.source_id,
            event.occurred_at or event.received_at,
            offset,
            version_id(event),
            event.event_id,
            0,
            None,
            event.topic,
            out,
            set(),
        )
    except Fallback:
        for entity, rows in out.items():
            del rows[mark.get(entity, 0) :]
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20241114)
    parser.add_argument("--show-source", help="Print the generated function of this table.")
    args = parser.parse_args()
    # The collector tuned as the service tunes it (start-up heap frozen, young threshold
    # 100,000), so that neither path pays for collections the service does not make.
    tune_garbage_collector()
    dataset = generate(args.events, args.seed)
    events = dataset.events
    mapping = mapping_for(events[0].source_kind, events[0].source_id, None)
    specs = {entity: entity_sql(entity, {}) for entity in crm_model().entities}
    compiler = Compiler(mapping, specs)
    rows = dataset.total_rows
    now = datetime.now(UTC)
    print(f"corpus: {len(events):,} events -> {rows:,} CRM rows")
    raw = [e.model_dump_json().encode() for e in events]
    timings: dict[str, list[float]] = defaultdict(list)
    fallbacks = 0
    for _ in range(args.repeat):
        timings["decode: strict_json.loads + RawEvent.model_validate"].append(
            _timed(
                lambda: [
                    RawEvent.model_validate(
                        strict_json.loads(v, max_depth=strict_json.RAW_EVENT_DEPTH)
                    )
                    for v in raw
                ]
            )
        )
        timings["decode: orjson.loads + RawEvent.model_validate"].append(
            _timed(lambda: [RawEvent.model_validate(orjson.loads(v)) for v in raw])
        )
        timings["decode: orjson.loads alone"].append(_timed(lambda: [orjson.loads(v) for v in raw]))
        timings["normalize_record (live)"].append(
            _timed(lambda: [normalize_record(e, mapping, offset=i) for i, e in enumerate(events)])
        )
        timings["normalize_record + stage_rows (tuples, reference)"].append(
            _timed(
                lambda: [
                    stage_rows(specs, [normalize_record(e, mapping, offset=i)], now)
                    for i, e in enumerate(events)
                ]
            )
        )
        out: Out = defaultdict(list)
        started = time.process_time()
        fallbacks = 0
        for offset, event in enumerate(events):
            if not compiled_rows(compiler, event, offset, out):
                fallbacks += 1
                for entity, tuples in stage_rows(
                    specs, [normalize_record(event, mapping, offset=offset)], now
                ).items():
                    out[entity] += tuples
        timings["compiled (with fallbacks)"].append(time.process_time() - started)
    print(f"\nCPU µs per CRM row (per event), median of {args.repeat}:")
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(f"  {name:<52} {1e6 * median / rows:6.1f} ({1e6 * median / len(events):6.1f})")
    print(f"  fallbacks to the reference path: {fallbacks:,} of {len(events):,} events")
    problems = check(compiler, mapping, specs, events, now)
    if args.show_source:
        compiler.function(args.show_source)
        print(compiler.sources[args.show_source])
    for problem in problems[:10]:
        print(f"  MISMATCH {problem}")
    if not problems:
        print("  outputs equal to normalize_record + stage_rows for every event")
    return 1 if problems else 0


def check(
    compiler: Compiler,
    mapping: Mapping,
    specs: dict[str, EntitySql],
    events: list[RawEvent],
    now: datetime,
) -> list[str]:
    """Every event's compiled tuples equal the reference path's (the fallbacks trivially)."""
    problems = []
    for offset, event in enumerate(events):
        out: Out = defaultdict(list)
        if not compiled_rows(compiler, event, offset, out):
            continue
        reference = stage_rows(specs, [normalize_record(event, mapping, offset=offset)], now)
        if dict(out) != dict(reference):
            for entity in set(out) | set(reference):
                for got, want in zip(out.get(entity, []), reference.get(entity, []), strict=False):
                    if got != want:
                        columns = specs[entity].columns
                        diff = [
                            (c, g, w) for c, g, w in zip(columns, got, want, strict=True) if g != w
                        ]
                        problems.append(f"{event.event_id} {entity}: {diff[:3]}")
                        break
            if len(problems) >= 10:
                break
    return problems


def _timed(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


if __name__ == "__main__":
    sys.exit(main())
