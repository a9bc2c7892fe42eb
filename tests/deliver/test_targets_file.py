"""The example targets file a user copies loads as it is, every kind it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ponte.deliver.connectors.registry import TARGET_KINDS, load_targets

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_targets_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "targets.example.yaml"
    for variable in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()):
        monkeypatch.setenv(variable, "a-test-value")
    [hubspot] = load_targets(path)
    assert hubspot.objects["company"].properties["abc_class"] == "ponte_curva_abc"
    header = path.read_text().split("\ntargets:")[0]
    missing = [kind for kind in TARGET_KINDS if f"{kind} (" not in header]
    assert not missing, f"the header should point to the docs of {missing}"


def test_an_unknown_kind_is_refused_naming_the_kinds(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n  - {id: x, kind: salesforce, base_url: https://x}\n")
    with pytest.raises(ValueError, match=r"targets\[0\] \(x\): kind: 'salesforce' is not one of"):
        load_targets(path)
