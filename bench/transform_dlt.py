"""The baseline: the same nested ERP rows loaded into the same PostgreSQL with dlt.

Started by ``bench/transform.py`` in a process of its own (so its peak RSS is its own).
Reads the root rows, each with its nested child tables as nested lists, exactly the
payloads the transform receives, and times one ``pipeline.run``: dlt's extract, its
normaliser (which unnests ``Itens pedido`` into a child table with generated keys, and
flattens ``$code`` objects into columns) and its loader, into a dataset (schema) of its
own in the benchmark's database. The rows it wrote are then counted in the database.

dlt does less than the transform: values stay the text the ERP sent (no ``1.234,56`` ->
1234.56, no date or document parsing), references stay keys (no ids, no parking), and
there are no versions, tombstones or change events. It is the floor a general-purpose
nested-JSON loader sets, not an equivalent.

    .venv/bin/python bench/transform_dlt.py --rows rows.json --dsn postgresql://... \
        --dataset dlt_bench_1 --workdir /tmp/x --result r.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

# Set before dlt is imported: no telemetry, no progress bars in the measured run.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

import dlt


def peak_rss_kib() -> int:
    """The process's resident-set high-water mark, in KiB (``VmHWM``; ru_maxrss if absent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def slug(table: str) -> str:
    """A resource name dlt accepts for an ERP table name with spaces."""
    return re.sub(r"\W+", "_", table.strip().lower())


def run(
    tables: dict[str, list[dict[str, Any]]],
    dsn: str,
    dataset: str,
    workdir: Path,
    file_format: str | None,
    marks: Path | None,
) -> dict[str, Any]:
    pipeline = dlt.pipeline(
        pipeline_name=f"ponte_bench_{dataset}",
        pipelines_dir=str(workdir),
        destination=dlt.destinations.postgres(credentials=dsn),
        dataset_name=dataset,
    )
    resources = [
        dlt.resource(rows, name=slug(table), table_name=table, write_disposition="append")
        for table, rows in tables.items()
    ]
    # The marks let the driver meter PostgreSQL's CPU over the same window.
    if marks is not None:
        (marks / "first").touch()
    cpu_started = time.process_time()
    started = time.perf_counter()
    info = pipeline.run(resources, loader_file_format=file_format)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if marks is not None:
        (marks / "done").touch()
    info.raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        names = [
            row[0]
            for row in client.execute_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "AND table_name NOT LIKE '\\_dlt\\_%%'",
                dataset,
            )
            or ()
        ]
        written = {}
        for name in names:
            counted = client.execute_sql(f'SELECT count(*) FROM "{dataset}"."{name}"')
            written[name] = int(counted[0][0]) if counted else 0
    trace = pipeline.last_trace
    assert trace is not None, "pipeline.run leaves a trace"
    normalized = trace.last_normalize_info.row_counts if trace.last_normalize_info else {}
    steps = {step.step: (step.finished_at - step.started_at).total_seconds()
             for step in trace.steps if step.finished_at is not None}  # fmt: skip
    return {
        "error": None,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows": sum(written.values()),
        "rows_by_table": written,
        "normalized_row_counts": dict(normalized),
        "step_seconds": steps,
        "file_format": file_format or "default",
        "dlt_version": dlt.__version__,
        "peak_rss_kib": peak_rss_kib(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=Path, required=True, help="JSON: {table: [root rows]}.")
    parser.add_argument("--dsn", required=True, help="postgresql:// DSN of the database.")
    parser.add_argument("--dataset", required=True, help="Schema dlt creates and loads into.")
    parser.add_argument("--workdir", type=Path, required=True, help="dlt's pipelines_dir.")
    parser.add_argument("--format", default=None, help="loader_file_format (default: dlt's).")
    parser.add_argument("--result", type=Path, required=True, help="Where to write the JSON.")
    parser.add_argument("--marks", type=Path, help="Directory for the first/done marks.")
    args = parser.parse_args(argv)
    tables = json.loads(args.rows.read_text(encoding="utf-8"))
    try:
        report = run(tables, args.dsn, args.dataset, args.workdir, args.format, args.marks)
    except Exception as error:  # reported to the driver, which fails the run
        report = {"error": f"{type(error).__name__}: {error}"[:2000]}
    args.result.write_text(json.dumps(report, indent=2))
    return 0 if report["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
