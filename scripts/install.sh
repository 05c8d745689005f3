#!/usr/bin/env bash
# Installs Atelier into ./.venv (created when missing). EXTRAS picks the optional dependency groups.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-gateway,worker,embedded}]"
