#!/usr/bin/env bash
# One command on a fresh machine: install Atelier into ./.venv, then run the `atelier` CLI.
#   ./atelier.sh analyze https://example.com/shirt.jpg ./local/dress.png
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
EXTRAS=gateway,worker,embedded bash "$here/scripts/install.sh"
exec "$here/.venv/bin/atelier" "$@"
