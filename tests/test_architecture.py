"""The architecture as tests: the import contract (``[tool.importlinter]`` in
pyproject.toml, docs/architecture.md), every module importable on its own, and the CLI
loading a service only in the command that runs it.

Why each matters: a service importing another couples their releases and hides which
concept lives where; an import cycle makes a module's importability depend on what was
imported before it (``import ponte.deliver.engine`` in a fresh interpreter once failed
this way while the whole suite passed, because something else was always imported first).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
SOURCE_ROOTS = [ROOT / "shared", *sorted((ROOT / "services").iterdir())]
SERVICES = ("ingest", "transform", "deliver", "ops")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

NOT_MODULES = {"ponte.shared.migrations.env"}
"""Alembic's environment script: Alembic runs it (it migrates on import), nobody imports it."""


def ponte_modules() -> list[str]:
    """Every module of the ``ponte`` namespace, from the source trees themselves."""
    found = []
    for root in SOURCE_ROOTS:
        for path in sorted((root / "ponte").rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in NOT_MODULES:
                found.append(name)
    return found


def lint_imports(config: Path, cwd: Path, pythonpath: str | None = None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_the_import_contract_holds() -> None:
    code, output = lint_imports(ROOT / "pyproject.toml", ROOT)
    assert code == 0, output
    assert "3 kept, 0 broken" in output, output


def test_the_contract_breaks_on_a_violation(tmp_path: Path) -> None:
    """The same contracts over a small tree that commits each violation once: shared code
    importing a service, a service importing another, and a cycle between them."""
    tree = {
        "fake/shared/__init__.py": "",
        "fake/shared/settings.py": "import fake.ingest.app\n",
        "fake/ingest/__init__.py": "",
        "fake/ingest/app.py": "import fake.deliver.engine\n",
        "fake/transform/__init__.py": "",
        "fake/deliver/__init__.py": "",
        "fake/deliver/engine.py": "import fake.ingest.app\n",
        "fake/ops/__init__.py": "",
    }
    for name, text in tree.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = ours["tool"]["importlinter"]["contracts"]
    lines = ['[tool.importlinter]\nroot_packages = ["fake"]\n']
    for contract in contracts:
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            if isinstance(value, list):
                value = [item.replace("ponte.", "fake.").replace("ponte", "fake") for item in value]
                lines.append(f"{key} = {value!r}".replace("'", '"'))
            else:
                lines.append(f'{key} = "{value}"')
        lines.append("")
    config = tmp_path / "contracts.toml"
    config.write_text("\n".join(lines), encoding="utf-8")
    code, output = lint_imports(config, tmp_path, pythonpath=str(tmp_path))
    assert code == 1, output
    assert "0 kept, 3 broken" in output, output
    assert "fake.shared.settings -> fake.ingest.app" in output, output
    assert "fake.ingest.app -> fake.deliver.engine" in output, output


CHECK_EACH_MODULE = textwrap.dedent(
    """
    import importlib, os, sys, traceback
    # Third-party libraries are loaded once, up front, to keep this fast; no ponte module
    # is: each child below starts with none of them imported.
    for heavy in ("fastapi", "pydantic", "sqlmodel", "sqlalchemy", "aiokafka", "asyncpg",
                  "httpx", "orjson", "yaml", "typer", "openpyxl", "alembic", "tenacity",
                  "prometheus_client", "uvicorn", "jinja2", "stdnum"):
        importlib.import_module(heavy)
    assert not any(name.startswith("ponte.") for name in sys.modules)
    failed = []
    for module in sys.argv[1:]:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(module)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(module)
    print("FAILED:", " ".join(failed))
    sys.exit(1 if failed else 0)
    """
)


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    modules = ponte_modules()
    assert len(modules) > 100 and "ponte.deliver.engine" in modules
    result = subprocess.run(
        [sys.executable, "-c", CHECK_EACH_MODULE, *modules],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]


def test_the_cli_imports_a_service_only_inside_the_command_that_runs_it() -> None:
    for path in (ROOT / "shared" / "ponte" / "cli.py", ROOT / "shared" / "ponte" / "dev.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: imports inside functions are the rule
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                assert name.split(".")[:2] not in [["ponte", s] for s in SERVICES], (
                    f"{path.name}:{node.lineno} imports {name} at module level"
                )
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, ponte.cli, ponte.dev; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert not [s for s in SERVICES if f"'ponte.{s}" in loaded], loaded
