"""The YAML files Ponte is configured with (sources, targets): secrets as ``${ENV_VAR}``,
so the files can live in git and the secrets in the environment or a Kubernetes Secret."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = document.get(key, []) if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a top-level '{key}:' list")
    return [expand_env(entry, f"{key}[{index}]") for index, entry in enumerate(entries)]
