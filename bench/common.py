"""What the benchmark scripts (deliver.py, e2e.py, ingest.py, transform.py) share: the
embedded stack's settings, the processes they start and stop, CPU read from /proc, and
the git state a result was measured at.

Only what was the same in each script lives here; what a script measures, and how it
reports it, stays in the script. The scripts run as ``python bench/<name>.py`` and import
this module by putting bench/ on ``sys.path``, as they already do for their other
helpers (openloop, pyspy, transform_data)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from ponte.shared.embedded import EmbeddedBroker, EmbeddedPostgres
from ponte.shared.settings import Settings

REPO_DIR = Path(__file__).resolve().parent.parent


def stack_settings(broker: EmbeddedBroker, database: EmbeddedPostgres, **fields: Any) -> Settings:
    """Settings for the embedded stack: no .env file (a developer's must not change a
    result), and the single-node broker's limits (Tansu cannot answer InitProducerId, so
    no idempotence; one replica). ``fields`` are the run's own settings."""
    return Settings(
        _env_file=None,
        kafka_bootstrap=broker.bootstrap,
        database_url=database.url,
        kafka_idempotence=False,
        kafka_replication_factor=1,
        **fields,
    )


# --- processes ---------------------------------------------------------------------------


class Children:
    """Every process a script starts, so that all of them stop on exit or Ctrl-C.

    Each runs in its own session (process group), so stopping it stops what it started
    too (uvicorn's workers, a profiler's target): SIGTERM to the group, SIGKILL after
    ``grace_s``."""

    def __init__(self, grace_s: float) -> None:
        self._grace_s = grace_s
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        command: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """``command`` running, its stdout and stderr appended to ``log``."""
        with log.open("ab") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                env=env, cwd=cwd,
            )  # fmt: skip
        self._running.append(process)
        return process

    def wait(self, process: subprocess.Popen[bytes], timeout_s: float) -> int:
        """The exit code; past ``timeout_s`` the process is stopped and TimeoutExpired
        raised."""
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(process)
            raise

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(self._grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def stop_all(self) -> None:
        for process in reversed(self._running):
            self.stop(process)
        self._running.clear()


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """A signal handler: SIGTERM ends a run the way Ctrl-C does, through the ``finally``
    blocks that stop the children and the embedded stack."""
    raise KeyboardInterrupt


# --- CPU accounting ----------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command line, CPU ticks used so far)."""
    table: dict[int, tuple[int, str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (int(fields[1]), command, int(fields[11]) + int(fields[12]))
    return table


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


# --- provenance --------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    """The commit, and the code files that differ from it: the working tree is what ran."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "modified": [line[3:] for line in git("status", "--porcelain").splitlines()
                     if line[3:].startswith(("services/", "shared/"))],
    }  # fmt: skip
