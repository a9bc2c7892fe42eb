"""The YAML files Ponte is configured with (sources, targets, pulls, mappings,
classification): read strictly, with secrets as ``${ENV_VAR}``, so the files can live in
git and the secrets in the environment or a Kubernetes Secret.

Strict means one thing YAML itself does not promise: a key given twice in one mapping is an
error naming the file, the line and the key. PyYAML keeps the last value silently, so
``{name: first_name, name: last_name}`` would quietly send only the last name, and a
repeated ``natural_key:`` would quietly change which CRM record is updated. Every loader of
a Ponte configuration file goes through ``load_yaml``/``parse_yaml``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ValueError):
    """A key appears twice in one YAML mapping."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (merge keys ``<<`` still work: a key
    written next to a merge overrides the merged one, as YAML defines)."""

    source_name = "<yaml>"

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_at: dict[Any, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            at = f"line {mark.line + 1} column {mark.column + 1}"
            try:
                seen = first_at.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if seen is not None:
                raise DuplicateKeyError(
                    f"{self.source_name}: {at}: key {key!r} is given twice in one mapping "
                    f"(first at {seen}); YAML would keep only the last one, so Ponte refuses "
                    "the file: remove one of them"
                )
            first_at[key] = at
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source_name: str) -> Any:
    """One YAML document, duplicate keys refused (``source_name`` names it in errors)."""
    loader = _StrictLoader(text)
    loader.source_name = source_name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: Path) -> Any:
    """A YAML file, duplicate keys refused with the file and line named."""
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))


def expand_env(value: Any, where: str) -> Any:
    """Replace ``${NAME}`` by the variable's value; a missing variable is an error naming
    the entry it was needed for."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ValueError(f"{where}: environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REFERENCE.sub(replace, value)
    if isinstance(value, list):
        return [expand_env(item, where) for item in value]
    if isinstance(value, dict):
        return {key: expand_env(item, f"{where}.{key}") for key, item in value.items()}
    return value


def load_entries(path: Path, key: str) -> list[Any]:
    """The top-level ``key:`` list of a YAML file, environment references expanded."""
    document = load_yaml(path) or {}
    entries = document.get(key, []) if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a top-level '{key}:' list")
    return [expand_env(entry, f"{key}[{index}]") for index, entry in enumerate(entries)]
