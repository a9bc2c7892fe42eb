"""scripts/audit.py: what a PyPI answer proves about a pin, and the lock it audits.

The decisions are pure functions over PyPI-shaped documents, tested without a network. The
last test runs the whole command against a loopback server speaking PyPI's JSON API, so the
lookups, the table and the exit code are exercised as `make audit` runs them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ponte_audit", ROOT / "scripts" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


audit = _load_audit()


def project(latest: str, vulnerabilities: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A document shaped like PyPI's ``/pypi/<name>/json`` answer."""
    document: dict[str, Any] = {"info": {"name": "example", "version": latest}, "releases": {}}
    if vulnerabilities is not None:
        document["vulnerabilities"] = vulnerabilities
    return document


def advisory(ident: str, *, withdrawn: str | None = None, fixed_in: tuple[str, ...] = ()) -> Any:
    return {
        "id": ident,
        "aliases": [f"CVE-{ident}"],
        "details": "...",
        "fixed_in": list(fixed_in),
        "withdrawn": withdrawn,
    }


PIN = audit.Pin("example", "2.0.0")


# --- PyPI's latest-release advisories ------------------------------------------------------


def test_pin_at_latest_with_live_advisories_is_vulnerable() -> None:
    answer = project("2.0.0", [advisory("PYSEC-1", fixed_in=("2.0.1",)), advisory("GHSA-2")])
    verdict = audit.assess_pin(PIN, answer)
    assert verdict.status == audit.VULNERABLE
    assert verdict.advisories == ("PYSEC-1", "GHSA-2")
    assert verdict.fixes == ("2.0.1",)
    assert verdict.latest == "2.0.0"


def test_pin_at_latest_without_advisories_is_clean() -> None:
    verdict = audit.assess_pin(PIN, project("2.0.0", []))
    assert verdict.status == audit.CLEAN
    assert verdict.source == "PyPI latest"


def test_latest_spelled_differently_is_the_same_release() -> None:
    verdict = audit.assess_pin(audit.Pin("example", "2.0"), project("2.0.0", []))
    assert verdict.status == audit.CLEAN


def test_withdrawn_advisories_are_dropped() -> None:
    only_withdrawn = project("2.0.0", [advisory("PYSEC-1", withdrawn="2026-01-02T00:00:00Z")])
    assert audit.assess_pin(PIN, only_withdrawn).status == audit.CLEAN
    mixed = project("2.0.0", [advisory("PYSEC-1", withdrawn="2026-01-02"), advisory("GHSA-2")])
    verdict = audit.assess_pin(PIN, mixed)
    assert verdict.status == audit.VULNERABLE
    assert verdict.advisories == ("GHSA-2",)


@pytest.mark.parametrize("latest_advisories", [[], [advisory("PYSEC-9")]])
def test_pin_older_than_latest_is_not_audited(latest_advisories: list[Any]) -> None:
    # The list describes 2.1.0 only: it neither clears 2.0.0 nor convicts it.
    verdict = audit.assess_pin(PIN, project("2.1.0", latest_advisories))
    assert verdict.status == audit.NOT_AUDITED
    assert verdict.reason == "pin older than latest 2.1.0"
    assert verdict.advisories == ()


def test_pin_newer_than_pypi_latest_is_not_audited() -> None:
    verdict = audit.assess_pin(PIN, project("1.9.0", []))
    assert verdict.status == audit.NOT_AUDITED
    assert verdict.reason == "pin newer than PyPI's latest 1.9.0"


def test_answer_without_an_advisory_list_is_not_audited() -> None:
    verdict = audit.assess_pin(PIN, project("2.0.0", None))
    assert verdict.status == audit.NOT_AUDITED
    assert "no advisory list" in verdict.reason


def test_failed_lookup_is_not_audited_with_its_reason() -> None:
    verdict = audit.assess_pin(PIN, "not on PyPI")
    assert (verdict.status, verdict.reason) == (audit.NOT_AUDITED, "not on PyPI")


# --- pip-audit's own answer, and the outcome ------------------------------------------------


def test_pip_audit_entries() -> None:
    skipped = {"name": "example", "skip_reason": "Dependency not found on PyPI"}
    assert audit.verdict_from_pip_audit(PIN, skipped) is None
    clean = audit.verdict_from_pip_audit(PIN, {"name": "example", "version": "2.0.0", "vulns": []})
    assert (clean.status, clean.source) == (audit.CLEAN, "pip-audit")
    vulnerable = audit.verdict_from_pip_audit(
        PIN,
        {
            "name": "example",
            "version": "2.0.0",
            "vulns": [{"id": "PYSEC-3", "fix_versions": ["2.0.2", "2.1.0"], "aliases": []}],
        },
    )
    assert vulnerable.status == audit.VULNERABLE
    assert vulnerable.advisories == ("PYSEC-3",)
    assert vulnerable.fixes == ("2.0.2", "2.1.0")


def test_exit_code_puts_a_vulnerability_before_anything_not_audited() -> None:
    clean = audit.Verdict(PIN, audit.CLEAN, "pip-audit")
    unknown = audit.Verdict(PIN, audit.NOT_AUDITED, "", reason="not on PyPI")
    vulnerable = audit.Verdict(PIN, audit.VULNERABLE, "pip-audit", advisories=("X",))
    assert audit.exit_code([clean, clean]) == audit.EXIT_CLEAN == 0
    assert audit.exit_code([clean, unknown]) == audit.EXIT_NOT_AUDITED == 3
    assert audit.exit_code([unknown, vulnerable, clean]) == audit.EXIT_VULNERABLE == 1


# --- the lock ------------------------------------------------------------------------------


def test_parse_lock_takes_exact_pins_only() -> None:
    text = "# header\n\nPyYAML==6.0.4\nsome_pkg==1.0  # why\n"
    assert audit.parse_lock(text) == [
        audit.Pin("pyyaml", "6.0.4"),
        audit.Pin("some-pkg", "1.0"),
    ]
    for broken in ("httpx>=0.27\n", "httpx\n", "-e .\n", "==1.0\n"):
        with pytest.raises(ValueError, match="line 1"):
            audit.parse_lock(broken)


def test_lock_pins_every_declared_dependency_within_its_range() -> None:
    """A pyproject.toml change without `scripts/audit.py lock` leaves a stale lock: caught."""
    pins = {pin.name: pin.version for pin in audit.parse_lock(audit.LOCK_PATH.read_text())}
    project_table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project_table["dependencies"]]
    for group in project_table["optional-dependencies"].values():
        declared += group
    checked = 0
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "ponte" or (requirement.marker and not requirement.marker.evaluate()):
            continue
        assert name in pins, f"{line!r} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {line!r}"
        )
        checked += 1
    assert checked >= 30


# --- the whole command against a loopback PyPI ---------------------------------------------


class FakePypi(BaseHTTPRequestHandler):
    """Answers ``/pypi/<name>/json`` from ``documents``; 404 for any other project."""

    documents: dict[str, dict[str, Any]] = {}

    def do_GET(self) -> None:
        name = self.path.strip("/").split("/")[1]
        document = self.documents.get(name)
        body = json.dumps(document).encode() if document else b"{}"
        self.send_response(200 if document else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_pypi() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePypi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    finally:
        server.shutdown()
        server.server_close()


def run(tmp_path: Path, url: str, lock: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "requirements.lock"
    path.write_text(lock)
    code = audit.main(["--no-pip-audit", "--pypi-url", url, "--lock-file", str(path)])
    return code, capsys.readouterr().out


def test_command_against_a_loopback_pypi(
    fake_pypi: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    FakePypi.documents = {
        "clean-one": project("1.0", []),
        "old-one": project("3.0", []),
        "bad-one": project("2.0", [advisory("GHSA-7", fixed_in=("2.1",))]),
    }
    code, out = run(tmp_path, fake_pypi, "clean-one==1.0\n", capsys)
    assert code == 0, out
    assert "1 pins: 1 audited clean, 0 with known vulnerabilities, 0 not audited" in out

    code, out = run(tmp_path, fake_pypi, "clean-one==1.0\nold-one==2.5\nmissing==1\n", capsys)
    assert code == 3, out
    assert "not audited: pin older than latest 3.0" in out
    assert "not audited: not on PyPI" in out

    code, out = run(tmp_path, fake_pypi, "old-one==2.5\nbad-one==2.0\n", capsys)
    assert code == 1, out
    assert "GHSA-7 (fixed in 2.1)" in out
