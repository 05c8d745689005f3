#!/usr/bin/env bash
# Installs Atelier into a virtual environment (VENV, default ./.venv; created when missing).
# EXTRAS picks the optional dependency groups. The classifier has its own environment, because
# TensorFlow and torch never share a process:
#   VENV=.venv-classifier EXTRAS=worker,classifier,embedded bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# pip < 26: the Detectron2 sdist (deploy/detectron2) has a direct-URL extra that pip 26 refuses
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24,<26"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-gateway,worker,embedded}]"
