"""The chaos run, long form: more records, more kill rounds, the same promises checked.

    .venv/bin/python bench/chaos.py                 # ~3 minutes: 3 kill rounds, 2,000+ requests
    .venv/bin/python bench/chaos.py --rounds 6 --scale 4

Prints what was sent and answered, the faults, how long the system took to settle after
the last fault, and every broken promise (none expected). The CI runs the short form in
tests/e2e/test_chaos.py. Logs stay in the printed directory when something is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.chaos import ChaosRun, Scale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="kill rounds (each service once)")
    parser.add_argument("--scale", type=int, default=2, help="load multiplier (1 = the CI's)")
    parser.add_argument("--database-down", type=float, default=30.0, help="seconds")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    scale = Scale(
        companies=40 * args.scale,
        orders=80 * args.scale,
        shop_orders=25 * args.scale,
        senders=8,
        kill_rounds=args.rounds,
        database_down_s=args.database_down,
        settle_timeout_s=300,
        seed=args.seed,
    )
    workdir = Path(tempfile.mkdtemp(prefix="ponte-chaos-"))
    workdir.chmod(0o755)
    report = asyncio.run(ChaosRun(workdir, scale).run())
    print(f"requests in the load       {report.sent}  (repeats included)")
    statuses = dict(sorted(report.expected.statuses.items()))
    print(f"answers by status          {statuses}  (0: no answer)")
    print(f"during the broker outage   {report.during_broker_outage}")
    print(f"kills (SIGKILL)            {', '.join(report.kills)}")
    print(f"CRM 429s / 5xx answered    {report.crm_rate_limited} / {report.crm_failed_calls}")
    print(f"settled after the faults   {report.settle_s:.1f} s")
    print(f"broken promises            {len(report.problems)}")
    for problem in report.problems[:50]:
        print(f"  - {problem}")
    if report.problems:
        print(f"logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
