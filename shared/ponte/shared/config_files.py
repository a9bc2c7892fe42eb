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


def line_of(text: str, path: tuple[str | int, ...]) -> int | None:
    """The 1-based line where ``path`` (keys and list indexes, as a pydantic error's
    ``loc`` gives them) is written in ``text``: the deepest part of the path found, so an
    error can name the line a person has to fix. None if the text does not parse."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None if node is None else node.start_mark.line + 1
    for part in path:
        if isinstance(node, MappingNode):
            found = next(
                (
                    (key, value)
                    for key, value in node.value
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part)
                ),
                None,
            )
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def located_problem(
    errors: list[Any], members: frozenset[str]
) -> tuple[tuple[str | int, ...], str]:
    """The one pydantic error worth showing, with its path as the file writes it.

    A field that is either a short form or a structured one (``str | FieldMapping``)
    fails both ways: a person who wrote a mapping meant the structured form, one who wrote
    a word meant the short form, so only that form's errors are kept, then the deepest
    one wins. ``members`` are the union members' names pydantic puts in the path."""

    def tag(part: Any) -> bool:
        return isinstance(part, str) and (
            part in members or part == "str" or part.startswith(("literal[", "function-"))
        )

    def short_form(error: Any) -> bool:
        return any(p == "str" or str(p).startswith("literal[") for p in error["loc"])

    # The short form's error carries what was written at the union's place.
    wrote_mapping = any(isinstance(e.get("input"), dict) for e in errors if short_form(e))
    kept = [e for e in errors if short_form(e) != wrote_mapping] or errors
    problem = max(kept, key=lambda e: len(e["loc"]))
    loc = tuple(p for p in problem["loc"] if not tag(p))
    return loc, str(problem["msg"])


class ConfigError(ValueError):
    """A configuration file that is readable YAML but wrong: the message names the file,
    the line and the path of the entry at fault (``entities.company.columns.x``)."""

    def __init__(self, source_name: str, text: str, path: tuple[str | int, ...], reason: str):
        line = line_of(text, path)
        where = ".".join(str(part) for part in path)
        at = f"line {line}: " if line is not None else ""
        super().__init__(
            f"{source_name}: {at}{where}: {reason}" if where else f"{source_name}: {at}{reason}"
        )
        self.source_name = source_name
        self.line = line
        self.path = path
        self.reason = reason
