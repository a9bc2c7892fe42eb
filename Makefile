# Ponte's two set-up commands: `make dev` runs Ponte locally, `make test` runs the suite.
# Both install what is missing first (a virtualenv with Ponte and, when run as root on
# Debian/Ubuntu, the PostgreSQL server package).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint audit bench-ingest clean

$(BIN)/.installed: pyproject.toml requirements.lock scripts/bootstrap.sh
	PYTHON=$(PYTHON) VENV=$(VENV) sh scripts/bootstrap.sh
	touch $@

dev: $(BIN)/.installed
	$(BIN)/ponte dev

# The ops page's headless-browser test wants Chromium (installed once, when root).
$(BIN)/.browser: $(BIN)/.installed
	sh scripts/bootstrap.sh browser
	touch $@

# One worker per core (pytest-xdist), each with its own broker and PostgreSQL: the tests
# share nothing else. `$(BIN)/pytest tests/...` runs a part of it in one process.
test: $(BIN)/.installed $(BIN)/.browser
	$(BIN)/pytest -n auto

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy shared services

# Known vulnerabilities in the locked dependencies (requirements.lock): pip-audit, else
# PyPI's latest-release advisories. Exit 1: a vulnerability; 3: some pins not audited.
audit: $(BIN)/.installed
	$(BIN)/python scripts/audit.py

bench-ingest: $(BIN)/.installed
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
