"""``.ponte/dev.env``: where ``make dev`` (``ponte dev``) writes how to reach its stack.

The running stack's addresses, the ops token and the demo sources' kinds and secrets, as
``KEY=value`` lines (git-ignored). The ``ponte`` commands that talk to a stack (``sign``,
``replay``, ``sources``, ``pull``, ``classify``, ``migrate``, ``topics``) read it when it
exists, below the process environment (an exported variable wins); a shell can take it
with ``set -a; . .ponte/dev.env; set +a``. ``ponte dev`` removes it when it stops, so a
stale file never points the CLI at a stack that is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

DEV_ENV = Path(".ponte") / "dev.env"


def secret_key(source_id: str) -> str:
    """The variable holding a demo source's secret: ``PONTE_DEV_SECRET_ERP_DEMO``."""
    return "PONTE_DEV_SECRET_" + source_id.upper().replace("-", "_")


def write(values: dict[str, str], path: Path = DEV_ENV) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by `ponte dev` for the stack it runs; removed when it stops.",
        "# `ponte` commands read it; `set -a; . .ponte/dev.env; set +a` exports it.",
        *(f"{name}={value}" for name, value in values.items()),
    ]
    # Created owner-only: it holds the ops token and the demo secrets.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    path.chmod(0o600)  # a file left by an earlier run keeps its old mode otherwise
    return path


def read(path: Path = DEV_ENV) -> dict[str, str]:
    """The file's values, each overridden by the same variable in the environment."""
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    return {name: os.environ.get(name, value) for name, value in values.items()}


def remove(path: Path = DEV_ENV) -> None:
    path.unlink(missing_ok=True)
