"""``ponte deliver`` with experiments applied, for ``bench/deliver.py --deliver-command``.

    .venv/bin/python bench/deliver.py --quick \\
        --deliver-command ".venv/bin/python bench/deliver_experiments.py known-join timed"

Not what the service does: each experiment swaps one piece in this process only, to
measure a change before it is made to a file someone else owns, or to measure what was
there before. Each is named on the command line:

- ``known-custom-plan``: ``Deliverer._known`` runs the service's query with
  ``plan_cache_mode = force_custom_plan`` for its transaction, so PostgreSQL plans it
  with the batch's keys every time. asyncpg prepares the query, and after small batches
  on a small table PostgreSQL may settle on a generic plan that reads the target's
  ``deliveries`` rows once per key: seconds per batch once the table holds ~10,000 rows.
  The diff proposed for engine.py (docs/benchmarks-deliver.md).
- ``known-join``: the same lookup written as a join of the unnested keys to
  ``deliveries``. Fast in a standalone reproduction, still slow in the service: kept to
  show that rewriting the query is not the fix.
- ``old-bucket``: the token bucket of the last commit (``git show HEAD:…/ratelimit.py``)
  instead of the working tree's rolling-window limiter.
- ``timed``: logs to stderr how long each ``getmany``, ``deliver``, ``_known``,
  ``_record`` and ``commit`` took, to see where a batch's time goes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
RATELIMIT = "services/deliver/ponte/deliver/ratelimit.py"

KNOWN_JOIN = (
    "SELECT d.* FROM unnest($2::text[], $3::text[], $4::text[]) "
    "AS k(entity, source_id, source_key) JOIN deliveries AS d ON d.target_id = $1 "
    "AND d.entity = k.entity AND d.source_id = k.source_id AND d.source_key = k.source_key"
)


def use_old_bucket() -> None:
    source = subprocess.run(
        ["git", "-C", str(REPO_DIR), "show", f"HEAD:{RATELIMIT}"],
        capture_output=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="ponte-old-ratelimit-")) / "ratelimit.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("ponte.deliver.ratelimit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ponte.deliver.ratelimit"] = module  # before anything imports it
    spec.loader.exec_module(module)


def use_known_join() -> None:
    from ponte.deliver.engine import Deliverer

    async def known(self: Any, target: Any, changes: list[Any]) -> dict[Any, Any]:
        if not changes:
            return {}
        rows = await self._pool.fetch(
            KNOWN_JOIN,
            target.id,
            [c.entity for c in changes],
            [c.source_id for c in changes],
            [c.source_key for c in changes],
        )
        return {(r["entity"], r["source_id"], r["source_key"]): r for r in rows}

    setattr(Deliverer, "_known", known)  # noqa: B010 - replacing a method on purpose


def use_known_custom_plan() -> None:
    from ponte.deliver import engine

    query = (
        "SELECT * FROM deliveries WHERE target_id = $1 AND (entity, source_id, source_key) "
        "IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))"
    )

    async def known(self: Any, target: Any, changes: list[Any]) -> dict[Any, Any]:
        if not changes:
            return {}
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            rows = await connection.fetch(
                query,
                target.id,
                [c.entity for c in changes],
                [c.source_id for c in changes],
                [c.source_key for c in changes],
            )
        return {(r["entity"], r["source_id"], r["source_key"]): r for r in rows}

    setattr(engine.Deliverer, "_known", known)  # noqa: B010 - replacing a method on purpose


def timed(name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = await call(*args, **kwargs)
        extra = f" n={sum(len(v) for v in result.values())}" if name == "getmany" else ""
        took = time.monotonic() - started
        print(f"{time.time():.3f} {name} {took:.3f}s{extra}", file=sys.stderr, flush=True)
        return result

    return wrapper


def use_timings() -> None:
    from aiokafka import AIOKafkaConsumer

    from ponte.deliver.engine import Deliverer

    AIOKafkaConsumer.getmany = timed("getmany", AIOKafkaConsumer.getmany)
    AIOKafkaConsumer.commit = timed("commit", AIOKafkaConsumer.commit)
    for name in ("deliver", "_known", "_record"):
        setattr(Deliverer, name, timed(name, getattr(Deliverer, name)))


def main() -> None:
    wanted = sys.argv[1:]
    unknown = set(wanted) - {"known-join", "known-custom-plan", "old-bucket", "timed"}
    if unknown:
        raise SystemExit(f"unknown experiment(s): {', '.join(sorted(unknown))}")
    if "old-bucket" in wanted:
        use_old_bucket()
    import ponte.deliver.app  # noqa: F401 - the service's import order (connectors first)

    if "known-join" in wanted:
        use_known_join()
    if "known-custom-plan" in wanted:
        use_known_custom_plan()
    if "timed" in wanted:
        use_timings()
    from ponte.cli import app

    sys.argv = ["ponte", "deliver"]
    app()


if __name__ == "__main__":
    main()
