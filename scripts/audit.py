"""Audit the locked dependencies (requirements.lock) for known vulnerabilities.

    .venv/bin/python scripts/audit.py            # audit requirements.lock (`make audit`)
    .venv/bin/python scripts/audit.py lock       # regenerate requirements.lock

Two sources, in this order, decided per pin:

1. pip-audit itself (``pip-audit -r requirements.lock --no-deps --disable-pip -f json``),
   which asks PyPI's per-version JSON API for the advisories of the exact pinned version.
   Whatever pip-audit audits, its answer stands.
2. For the pins pip-audit skipped (it says "could not be audited" when the per-version
   endpoint is unreachable, as behind a proxy that answers only the project endpoint), the
   unversioned project endpoint ``https://pypi.org/pypi/<name>/json``. Its
   ``vulnerabilities`` list holds the advisories affecting the project's *latest* release
   only, so it is authoritative for a pin equal to that release and says nothing about any
   other version: such a pin is reported "not audited", never counted clean.

Exit codes: 0 every pin audited and clean; 1 at least one known vulnerability (whatever
else); 3 nothing vulnerable found but some pins could not be audited (2 is argparse's own
usage error). The table names the reason of every pin not audited.

The lock is pip's own resolution of ``pip install -e '.[dev]'`` (``pip install --dry-run
--ignore-installed --report``) on this platform: the same resolver and indexes an install
uses, without touching any environment. ``scripts/bootstrap.sh`` installs with it as a
constraint file, so pins a platform does not need are ignored there rather than failing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
LOCK_PATH = ROOT / "requirements.lock"
PYPI_URL = "https://pypi.org/pypi"
PIP_AUDIT_TIMEOUT_S = 180.0
# A few lookups at a time: fast enough for ~100 pins, polite to PyPI and to a proxy.
CONCURRENCY = 4

EXIT_CLEAN = 0
EXIT_VULNERABLE = 1
EXIT_NOT_AUDITED = 3

CLEAN = "clean"
VULNERABLE = "VULNERABLE"
NOT_AUDITED = "not audited"


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of the lock, the name canonical (PEP 503)."""

    name: str
    version: str


@dataclass(frozen=True)
class Verdict:
    """What is known about one pin, and from where."""

    pin: Pin
    status: str  # CLEAN, VULNERABLE or NOT_AUDITED
    source: str  # "pip-audit", "PyPI latest" or "" when not audited
    latest: str = ""  # PyPI's latest release, when we asked PyPI
    advisories: tuple[str, ...] = ()
    reason: str = ""  # why not audited
    fixes: tuple[str, ...] = field(default=())  # versions that fix the advisories


# --- the decisions (pure) ------------------------------------------------------------------


def parse_lock(text: str) -> list[Pin]:
    """The pins of a lock file: ``name==version`` lines, comments and blanks ignored.

    Anything else (a range, a URL, an option) is refused: the lock exists to say exactly
    which version is audited, so an inexact line is a broken lock, not something to skip.
    """
    pins = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or ";" in version:
            raise ValueError(f"line {number} is not an exact pin 'name==version': {raw!r}")
        pins.append(Pin(canonicalize_name(name.strip()), version.strip()))
    return pins


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _is_newer(a: str, b: str) -> bool:
    try:
        return Version(a) > Version(b)
    except InvalidVersion:
        return False


def assess_pin(pin: Pin, answer: Mapping[str, Any] | str) -> Verdict:
    """Judge a pin from PyPI's unversioned project JSON, or from why it could not be had.

    ``answer`` is the decoded ``/pypi/<name>/json`` document, or a string saying why there
    is none (not on PyPI, network error). The document's ``vulnerabilities`` describe its
    ``info.version`` release only: a pin equal to it is clean or vulnerable by that list
    (withdrawn advisories dropped), any other pin is not audited.
    """
    if isinstance(answer, str):
        return Verdict(pin, NOT_AUDITED, "", reason=answer)
    latest = str(answer.get("info", {}).get("version", ""))
    if not latest:
        return Verdict(pin, NOT_AUDITED, "", reason="PyPI's answer names no latest release")
    if not _same_version(pin.version, latest):
        if _is_newer(pin.version, latest):
            reason = f"pin newer than PyPI's latest {latest}"
        else:
            reason = f"pin older than latest {latest}"
        return Verdict(pin, NOT_AUDITED, "", latest=latest, reason=reason)
    advisories = answer.get("vulnerabilities")
    if not isinstance(advisories, list):
        return Verdict(
            pin, NOT_AUDITED, "", latest=latest, reason="PyPI's answer has no advisory list"
        )
    live = [a for a in advisories if not a.get("withdrawn")]
    if not live:
        return Verdict(pin, CLEAN, "PyPI latest", latest=latest)
    return Verdict(
        pin,
        VULNERABLE,
        "PyPI latest",
        latest=latest,
        advisories=tuple(str(a.get("id", "?")) for a in live),
        fixes=tuple(sorted({str(f) for a in live for f in a.get("fixed_in") or []})),
    )


def verdict_from_pip_audit(pin: Pin, entry: Mapping[str, Any]) -> Verdict | None:
    """pip-audit's answer for one dependency, or None when pip-audit skipped it."""
    if "skip_reason" in entry or "vulns" not in entry:
        return None
    vulns = entry["vulns"]
    if not vulns:
        return Verdict(pin, CLEAN, "pip-audit")
    return Verdict(
        pin,
        VULNERABLE,
        "pip-audit",
        advisories=tuple(str(v.get("id", "?")) for v in vulns),
        fixes=tuple(sorted({str(f) for v in vulns for f in v.get("fix_versions") or []})),
    )


def exit_code(verdicts: Iterable[Verdict]) -> int:
    """A vulnerability outranks anything not audited: it is the one that needs acting on."""
    statuses = {v.status for v in verdicts}
    if VULNERABLE in statuses:
        return EXIT_VULNERABLE
    if NOT_AUDITED in statuses:
        return EXIT_NOT_AUDITED
    return EXIT_CLEAN


# --- the sources (I/O) ---------------------------------------------------------------------


def run_pip_audit(lock: Path, timeout_s: float) -> tuple[dict[str, Mapping[str, Any]], str]:
    """pip-audit's JSON entries by canonical name, and a note when it gave none.

    Any failure (not installed, timeout, output that is not its JSON) yields no entries:
    every pin then goes to the fallback, which says what it could and could not audit.
    """
    exe = shutil.which("pip-audit", path=str(Path(sys.executable).parent)) or shutil.which(
        "pip-audit"
    )
    if exe is None:
        return {}, "pip-audit not installed"
    command = [exe, "-r", str(lock), "--no-deps", "--disable-pip", "-f", "json"]
    command += ["--progress-spinner", "off"]
    try:
        done = subprocess.run(  # noqa: S603 - our own argument list, no shell
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {}, f"pip-audit gave no answer within {timeout_s:.0f}s"
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, f"pip-audit failed (exit {done.returncode}): {last}"
    entries: dict[str, Mapping[str, Any]] = {
        canonicalize_name(d["name"]): d for d in report.get("dependencies", [])
    }
    skipped = sum(1 for d in entries.values() if "skip_reason" in d)
    note = f"pip-audit skipped {skipped} of {len(entries)} pins" if skipped else ""
    return entries, note


async def fetch_projects(
    names: Iterable[str], pypi_url: str, timeout_s: float
) -> dict[str, Mapping[str, Any] | str]:
    """PyPI's unversioned JSON document per project, or the reason there is none."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def fetch(client: httpx.AsyncClient, name: str) -> Mapping[str, Any] | str:
        async with gate:
            try:
                response = await client.get(f"{pypi_url}/{name}/json")
            except httpx.HTTPError as error:
                return f"PyPI lookup failed: {type(error).__name__}"
        if response.status_code == 404:
            return "not on PyPI"
        if response.status_code != 200:
            return f"PyPI answered {response.status_code}"
        try:
            document = response.json()
        except ValueError:
            return "PyPI's answer is not JSON"
        return document if isinstance(document, dict) else "PyPI's answer is not an object"

    ordered = list(names)
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client:
        answers = await asyncio.gather(*(fetch(client, name) for name in ordered))
    return dict(zip(ordered, answers, strict=True))


def audit(
    lock: Path, *, use_pip_audit: bool, pypi_url: str, timeout_s: float
) -> tuple[list[Verdict], list[str]]:
    """Every pin's verdict (pip-audit's where it has one, PyPI latest otherwise) and notes."""
    pins = parse_lock(lock.read_text())
    notes: list[str] = []
    verdicts: dict[Pin, Verdict] = {}
    if use_pip_audit:
        entries, note = run_pip_audit(lock, PIP_AUDIT_TIMEOUT_S)
        if note:
            notes.append(note)
        for pin in pins:
            entry = entries.get(pin.name)
            verdict = verdict_from_pip_audit(pin, entry) if entry else None
            if verdict is not None:
                verdicts[pin] = verdict
    rest = [pin for pin in pins if pin not in verdicts]
    if rest:
        notes.append(f"{len(rest)} pins checked against PyPI's latest-release advisories")
        answers = asyncio.run(fetch_projects((p.name for p in rest), pypi_url, timeout_s))
        for pin in rest:
            verdicts[pin] = assess_pin(pin, answers[pin.name])
    return [verdicts[pin] for pin in pins], notes


# --- the lock ------------------------------------------------------------------------------

LOCK_HEADER = """\
# requirements.lock: the exact versions `pip install -e '.[dev]'` resolves to (runtime,
# the embedded broker, test and lint tools, pip-audit), Ponte itself left out.
# scripts/bootstrap.sh installs with it as a constraint file (-c): a platform that needs
# fewer packages ignores the extra pins; one that needs more gets those unpinned.
# `make audit` (scripts/audit.py) checks these versions for known vulnerabilities.
#
# Regenerate after changing pyproject.toml's dependencies, or to take newer releases:
#     .venv/bin/python scripts/audit.py lock
# (pip's resolver, --dry-run --ignore-installed: the newest versions the configured
# indexes offer, whatever the venv holds), then `make audit` and commit both.
"""


def resolve_lock(python: str) -> list[Pin]:
    """pip's resolution of ``-e '.[dev]'`` from scratch, without installing anything.

    setuptools is resolved too although nothing needs it (the build backend is hatchling):
    ``python -m venv`` on 3.11 seeds an old one (65.5) with published advisories, so the
    lock pins a current one and bootstrap upgrades to it, which puts it under the audit."""
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        command += ["--quiet", "--report", str(report_path), "-e", ".[dev]", "setuptools"]
        subprocess.run(command, cwd=ROOT, check=True)  # noqa: S603 - fixed argument list
        report = json.loads(report_path.read_text())
    pins = {
        Pin(canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"])
        for item in report["install"]
        if canonicalize_name(item["metadata"]["name"]) != "ponte"
    }
    return sorted(pins, key=lambda pin: pin.name)


def write_lock(pins: list[Pin], path: Path) -> None:
    resolved_on = (
        f"# Resolved on {platform.system()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}.\n"
    )
    lines = "".join(f"{pin.name}=={pin.version}\n" for pin in pins)
    path.write_text(LOCK_HEADER + resolved_on + "\n" + lines)


# --- the command ---------------------------------------------------------------------------


def render_table(verdicts: list[Verdict]) -> str:
    rows = [("package", "pinned", "latest", "advisories", "status")]
    for v in verdicts:
        advisories = ", ".join(v.advisories) or "-"
        if v.fixes:
            advisories += f" (fixed in {', '.join(v.fixes)})"
        if v.status == NOT_AUDITED:
            status = f"{NOT_AUDITED}: {v.reason}"
        else:
            status = f"{v.status} ({v.source})"
        rows.append((v.pin.name, v.pin.version, v.latest or "-", advisories, status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    )


def summary(verdicts: list[Verdict]) -> str:
    count = {s: sum(1 for v in verdicts if v.status == s) for s in (CLEAN, VULNERABLE)}
    not_audited = len(verdicts) - count[CLEAN] - count[VULNERABLE]
    return (
        f"{len(verdicts)} pins: {count[CLEAN]} audited clean, {count[VULNERABLE]} with known "
        f"vulnerabilities, {not_audited} not audited"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", nargs="?", choices=["audit", "lock"], default="audit")
    parser.add_argument("--lock-file", type=Path, default=LOCK_PATH)
    parser.add_argument("--pypi-url", default=PYPI_URL, help="PyPI's JSON API root")
    parser.add_argument("--timeout", type=float, default=15.0, help="per PyPI request, s")
    parser.add_argument(
        "--no-pip-audit", action="store_true", help="only PyPI's latest-release advisories"
    )
    args = parser.parse_args(argv)

    if args.command == "lock":
        pins = resolve_lock(sys.executable)
        write_lock(pins, args.lock_file)
        print(f"wrote {len(pins)} pins to {args.lock_file}")
        return 0

    verdicts, notes = audit(
        args.lock_file,
        use_pip_audit=not args.no_pip_audit,
        pypi_url=args.pypi_url.rstrip("/"),
        timeout_s=args.timeout,
    )
    print(render_table(verdicts))
    print()
    for note in notes:
        print(f"note: {note}")
    print(summary(verdicts))
    code = exit_code(verdicts)
    if code == EXIT_VULNERABLE:
        print("FAIL: known vulnerabilities in locked dependencies", file=sys.stderr)
    elif code == EXIT_NOT_AUDITED:
        print(
            "INCOMPLETE: no known vulnerability found, but some pins could not be audited "
            "(see their status)",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
