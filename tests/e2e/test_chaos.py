"""The chaos suite, short form: the whole system under kills, a broker restart, a 30 s
database stop and a CRM storm keeps every promise (``tests/e2e/chaos.py``). The long form
is ``bench/chaos.py``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.chaos import ChaosRun, Scale

pytestmark = pytest.mark.integration


async def test_every_promise_holds_through_kills_and_outages() -> None:
    # Not tmp_path: PostgreSQL runs as its own user and must reach its directory.
    workdir = Path(tempfile.mkdtemp(prefix="ponte-chaos-"))
    workdir.chmod(0o755)
    report = await ChaosRun(workdir, Scale()).run()
    summary = (
        f"logs in {workdir}; sent {report.sent}, statuses {report.expected.statuses}, "
        f"kills {report.kills}, "
        f"during broker outage {report.during_broker_outage}, settled in {report.settle_s:.0f}s"
    )
    assert not report.problems, f"{summary}\n" + "\n".join(report.problems[:40])
    # The faults really happened and were seen: otherwise this proves nothing.
    assert len(report.kills) >= 7, summary
    outage = report.during_broker_outage
    assert outage, "no request was made while the broker was down"
    # 202 (accepted) needs the broker; 200 answers a repeat of an accepted webhook (checked
    # per request in the run: a 200 for a webhook never accepted is a problem above).
    assert not outage.get(202), f"accepted without a broker: {outage}"
    assert outage.get(503), f"the ingest should answer 503 without a broker: {outage}"
    assert report.crm_failed_calls > 0, "the CRM storm met no call"
    assert report.expected.accepted >= report.sent
    shutil.rmtree(workdir, ignore_errors=True)  # kept when something failed, for its logs
