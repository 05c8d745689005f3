#!/usr/bin/env bash
# Installs Detectron2 into a virtual environment that already has torch and torchvision (VENV, default
# ./.venv-torch, relative to the repository root). The package registry has Detectron2 only as the
# pb1-detectron2 0.6 sdist, which does not build or run as published: this downloads it, checks its hash,
# patches it with patch.py (README.md beside this file says why) and installs it. A second run with the
# same patches and requirements does nothing. Containers that reach the internet build upstream
# Detectron2 instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=deploy/detectron2
venv=${VENV:-.venv-torch}
py="$venv/bin/python"
sdist="pb1-detectron2==0.6"
sdist_sha256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
pip=("$py" -m pip --disable-pip-version-check)

step() { echo "detectron2: $*"; }
fail() {
  echo "detectron2: $*" >&2
  exit 1
}

[ -x "$py" ] || fail "no virtual environment at $venv (set VENV)"

# What is installed is named by everything that shapes it: the sdist, the patches, the requirements.
# The marker module records it; reading it as a file spares importing torch (seconds) on a re-run.
stamp=$(cat <(echo "$sdist $sdist_sha256") "$here/patch.py" "$here/requirements.txt" | sha256sum | cut -c1-16)
marker="$("$py" -c "import sysconfig; print(sysconfig.get_path('purelib'))")/detectron2/atelier_patch.py"
if grep -qx "INSTALL_STAMP = '$stamp'" "$marker" 2>/dev/null; then
  step "$sdist with patches $stamp is already installed in $venv; nothing to do"
  exit 0
fi
"$py" -c "import torch, torchvision" 2>/dev/null ||
  fail "$venv has no torch/torchvision; install them first (this step never installs torch)"

step "1/6 build tools: pip<26 (newer refuses the sdist's direct-URL extra), setuptools<81 (pkg_resources), wheel"
"${pip[@]}" install --quiet "pip<26" "setuptools<81" wheel

step "2/6 dependencies: $here/requirements.txt"
"${pip[@]}" install --quiet -r "$here/requirements.txt"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step "3/6 download the $sdist sdist"
# setup.py imports torch even to report its metadata: hence this environment, without build isolation.
"${pip[@]}" download --quiet --no-deps --no-build-isolation --no-binary :all: "$sdist" -d "$tmp/dist"
archives=("$tmp"/dist/*.tar.gz)
[ ${#archives[@]} -eq 1 ] || fail "expected one sdist in $tmp/dist, found: ${archives[*]}"
echo "$sdist_sha256  ${archives[0]}" | sha256sum --check --quiet - ||
  fail "${archives[0]} does not have the sha256 $sdist_sha256 that patch.py was written for"
mkdir "$tmp/src"
tar -xzf "${archives[0]}" -C "$tmp/src" --strip-components=1

step "4/6 patch the source ($here/patch.py)"
"$py" "$here/patch.py" "$tmp/src" --stamp "$stamp"

step "5/6 build and install (no C++ extension)"
"${pip[@]}" install --quiet --no-build-isolation --no-deps --force-reinstall "$tmp/src"

step "6/6 check: pip check, import, no TensorFlow"
"${pip[@]}" check
"$py" -W ignore::FutureWarning -c "import detectron2.atelier_patch as p, detectron2.modeling; assert p.INSTALL_STAMP == '$stamp'"
if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is None)"; then
  fail "TensorFlow is installed in $venv; torch and TensorFlow never share an environment"
fi
step "installed $sdist with patches $stamp in $venv"
