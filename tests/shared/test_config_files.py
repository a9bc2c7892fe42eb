"""Every YAML file Ponte loads refuses a key given twice, naming the file, line and key.

PyYAML keeps the last of two equal keys without a word: ``{legal_name: name, legal_name:
trade_name}`` would quietly send only one of them, and a second ``natural_key:`` would
quietly change which CRM record is updated. Each loader is tested with the file it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ponte.deliver.connectors.registry import load_targets
from ponte.deliver.origin import load_origins
from ponte.deliver.status_back.config import load_config as load_status_back
from ponte.shared.config_files import DuplicateKeyError, parse_yaml
from ponte.shared.mapping import load_mapping
from ponte.shared.pulls import load_pulls_file
from ponte.shared.sources import load_sources_file
from ponte.transform.classification import load_config as load_classification

TARGETS = """\
targets:
  - id: crm
    kind: hubspot
    token: x
    objects:
      contact:
        object_type: contacts
        properties: {name: firstname, name: lastname}
"""
SOURCES = """\
sources:
  - id: erp-matriz
    kind: erp
    secret: one
    secret: two
"""
PULLS = """\
pulls:
  - source: erp-matriz
    kind: rest
    url: https://erp.example.com/api
    url: https://other.example.com/api
"""
MAPPING = """\
tables:
  Empresa:
    entity: company
    key: [codigo]
    fields:
      cnpj: document
      razao: legal_name
      cnpj: trade_name
"""
CLASSIFICATION = """\
classification:
  a_share: 0.8
  a_share: 0.5
"""
ORIGINS = """\
origins:
  - source: loja
    kind: shopify
    kind: woocommerce
"""
STATUS_BACK = """\
crm_webhooks:
  - target: hubspot-main
    client_secret: one
    client_secret: two
"""

Loader = Callable[[Path], Any]
CASES: list[tuple[str, str, Loader, int, str]] = [
    ("targets.yaml", TARGETS, load_targets, 8, "name"),
    ("sources.yaml", SOURCES, load_sources_file, 5, "secret"),
    ("pulls.yaml", PULLS, load_pulls_file, 5, "url"),
    ("erp.yaml", MAPPING, load_mapping, 8, "cnpj"),
    ("classification.yaml", CLASSIFICATION, load_classification, 3, "a_share"),
    ("origins.yaml", ORIGINS, load_origins, 4, "kind"),
    ("status-back.yaml", STATUS_BACK, load_status_back, 4, "client_secret"),
]


@pytest.mark.parametrize(
    ("name", "text", "load", "line", "key"), CASES, ids=[case[0] for case in CASES]
)
def test_every_loader_refuses_a_duplicate_key_naming_file_line_and_key(
    tmp_path: Path, name: str, text: str, load: Loader, line: int, key: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DuplicateKeyError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message
    assert f"line {line} " in message
    assert f"key {key!r} is given twice" in message


def test_the_same_key_in_two_mappings_and_merge_keys_are_fine() -> None:
    document = parse_yaml(
        "a: {name: x}\nb: {name: y}\nbase: &base {k: 1, j: 2}\nc: {<<: *base, k: 3}\n", "f"
    )
    assert document["c"] == {"k": 3, "j": 2}  # a key beside a merge overrides it
    assert document["a"] == {"name": "x"} and document["b"] == {"name": "y"}


def test_a_duplicate_in_a_flow_mapping_names_its_column() -> None:
    with pytest.raises(DuplicateKeyError, match=r"line 1 column 20: key 'name' .*column 2\)"):
        parse_yaml("{name: first_name, name: last_name}", "targets.yaml")
