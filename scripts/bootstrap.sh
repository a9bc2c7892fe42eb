#!/bin/sh
# Install what `make dev` and `make test` need and is missing: the PostgreSQL server
# binaries (Debian/Ubuntu package, when we are root and can apt-get) and a virtualenv with
# Ponte, its test tools and the embedded broker. Safe to run again.
set -eu
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${PONTE_PG_BINDIR:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing the PostgreSQL server (apt-get install postgresql)..."
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "PostgreSQL server binaries not found: install the 'postgresql' package" \
             "(or set PONTE_PG_BINDIR to the directory holding initdb and pg_ctl)" >&2
        exit 1
    fi
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Ponte needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
