#!/bin/sh
# Install what `make dev` and `make test` need and is missing: the PostgreSQL server and
# promtool (Debian/Ubuntu packages, when we are root and can apt-get) and a virtualenv with
# Ponte, its test tools and the embedded broker, at the versions of requirements.lock. Safe
# to run again.
set -eu
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# `bootstrap.sh browser`: only Debian's Chromium and its driver, for the ops page's
# headless test (`make test` asks for it; `make dev` does not need a browser). Best
# effort: without them that one test is skipped, saying why.
if [ "${1:-}" = browser ]; then
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing: chromium chromium-driver (apt-get)..."
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends chromium chromium-driver >/dev/null; } \
                || echo "note: chromium not installed; the ops page's browser test will skip" >&2
        fi
    fi
    exit 0
fi

# System packages: the PostgreSQL server (the embedded database of `make dev` and the
# tests), and promtool from Debian's prometheus package (only the tests need it: they
# check the alert rules with it).
missing=""
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "${PONTE_PG_BINDIR:-}" ] \
    || missing="$missing postgresql"
command -v promtool >/dev/null || missing="$missing prometheus"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing:$missing (apt-get)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
        >/dev/null
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${PONTE_PG_BINDIR:-}" ]; then
    echo "PostgreSQL server binaries not found: install the 'postgresql' package" \
         "(or set PONTE_PG_BINDIR to the directory holding initdb and pg_ctl)" >&2
    exit 1
fi
command -v promtool >/dev/null || echo "note: promtool not found (Debian package" \
    "'prometheus'): the alert-rule tests will fail until it is installed" >&2

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Ponte needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# requirements.lock as a constraint: every package gets the version `make audit` checked
# (pip included), and pins a platform does not need are ignored instead of failing. It
# also moves an existing venv to those versions when the lock changes.
"$VENV/bin/python" -m pip install -q -c requirements.lock --upgrade pip setuptools
"$VENV/bin/python" -m pip install -q -c requirements.lock -e '.[dev]'
