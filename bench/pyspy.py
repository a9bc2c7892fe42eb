"""Sampling a server process with py-spy during a load run, and reading the samples.

``bench/ingest.py --profile`` uses this to answer "where does the time go" under the same
load that produced the figures. Samples are taken ``--nonblocking`` (the process is not
paused), and the profiled run is an extra one, never one of the measured runs.

py-spy's ``raw`` output is one collapsed stack a line (``frame;frame;... count``, each
frame ``function (file:line)``); with ``--threads`` the first frame names the thread.
``summarize`` keeps the event-loop thread (the one running ``asyncio``'s runner: that is
where a single uvicorn worker spends its one core; other threads, such as anyio's worker
pool, mostly wait), folds line numbers away, and reports per function the share of that
thread's samples with the function on the stack (inclusive) and at its top (self). Time
spent in C (uvloop, asyncpg's protocol, httptools) is charged to the Python frame that
called it. Coroutines resumed by uvloop's C code have stacks that start at the coroutine
(py-spy cannot see past C frames), so an outer frame's inclusive share is a lower bound.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")
_PATH_MARKERS = ("/site-packages/", "/services/ingest/", "/shared/", "/bench/", "/lib/python3")
LOOP_MARKER = "(asyncio/runners.py)"
"""A frame only the thread running the event loop has."""


def py_spy_binary() -> str | None:
    """py-spy from the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(
    pid: int, duration_s: float, output: Path, rate: int = 200
) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` in the background; the caller waits on the process."""
    binary = py_spy_binary()
    if binary is None:
        raise RuntimeError("py-spy is not installed: pip install -r bench/requirements.txt")
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s))),
         "--rate", str(rate), "--format", "raw", "--nonblocking", "--threads",
         "--full-filenames", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def short_frame(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in _PATH_MARKERS:
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            if marker == "/lib/python3":  # ".11/asyncio/x.py" -> "asyncio/x.py"
                path = path.split("/", 1)[-1]
            break
    return f"{match['function']} ({path})"


@dataclass(frozen=True)
class Profile:
    loop_samples: int
    """Samples of the event-loop thread while it was not idle."""
    other_samples: int
    """Samples of every other thread (anyio's worker pool, for sync dependencies)."""
    inclusive: list[tuple[str, float]]
    """(function, % of loop samples with it on the stack), largest first; frames present
    in every sample (the interpreter's and uvicorn's start-up trunk) left out."""
    leaf: list[tuple[str, float]]
    """(function, % of loop samples with it at the top of the stack), largest first."""
    stacks: list[tuple[list[str], int]]
    """The loop thread's stacks (shortened frames) and their counts, for further digging."""

    def by_package(self) -> list[tuple[str, float]]:
        """Self time grouped by the package of the top frame: robust to the cut-short
        stacks of coroutines resumed from C, which hide their callers but not their top."""
        packages: Counter[str] = Counter()
        for frames, count in self.stacks:
            path = _FRAME.match(frames[-1])
            name = path["file"] if path else frames[-1]
            packages[name.split("/", 2)[0] if not name.startswith("ponte/") else "ponte"] += count
        scale = 100.0 / self.loop_samples if self.loop_samples else 0.0
        return [(name, count * scale) for name, count in packages.most_common()]

    def share(self, frame_part: str) -> float:
        """% of loop samples with a frame containing ``frame_part`` on the stack."""
        hits = sum(n for frames, n in self.stacks if any(frame_part in f for f in frames))
        return 100.0 * hits / self.loop_samples if self.loop_samples else 0.0


def summarize(raw: Path, top: int = 25) -> Profile:
    by_thread: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread ") else "thread (?)"
        shortened = [short_frame(frame) for frame in frames if not frame.startswith("thread ")]
        if shortened:
            by_thread[thread].append((shortened, int(count_text)))
    loop_thread = max(
        by_thread,
        key=lambda t: sum(n for frames, n in by_thread[t] if any(LOOP_MARKER in f for f in frames)),
        default=None,
    )
    stacks = by_thread.get(loop_thread, []) if loop_thread else []
    samples = sum(n for _, n in stacks)
    other = sum(n for t, entries in by_thread.items() if t != loop_thread for _, n in entries)
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
    scale = 100.0 / samples if samples else 0.0
    # Leave out the start-up trunk (runpy, click, uvicorn.main ... Runner.run): every stack
    # that reaches back to the start has it, so it says nothing about the request path.
    trunk = max((n for f, n in inclusive.items() if LOOP_MARKER in f), default=samples + 1)
    branching = [(f, n * scale) for f, n in inclusive.most_common() if n < trunk]
    return Profile(
        samples,
        other,
        branching[:top],
        [(frame, count * scale) for frame, count in leaf.most_common(top)],
        stacks,
    )
