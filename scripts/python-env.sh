#!/usr/bin/env bash
# Creates (or refreshes) the venv the Python client's tests run in, from
# PyPI only, and installs clients/python into it as a user would
# (pip install ./clients/python, not editable), with its test extra.
#   bash scripts/python-env.sh     prints the venv's python on stdout
#
# The venv lives in .tools/python-venv (FDX_PYTHON_VENV overrides). It is
# made anew only when clients/python/pyproject.toml changes; the package
# itself is reinstalled on every call (seconds, no download), so the tests
# always run the working tree's code.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${FDX_PYTHON_VENV:-$PWD/.tools/python-venv}"
python="${FDX_PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || { echo "python-env.sh: $python is required" >&2; exit 1; }
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "python-env.sh: clients/python needs Python 3.10 or later, $python is $("$python" -V 2>&1)" >&2
  exit 1
fi

pip() { "$venv/bin/python" -m pip --disable-pip-version-check --quiet "$@" >&2; }
stamp="$venv/.fdx-pyproject-sha256"
want=$({ sha256sum clients/python/pyproject.toml 2>/dev/null || shasum -a 256 clients/python/pyproject.toml; } | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "python-env.sh: creating $venv (packages from PyPI)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip install --upgrade pip
  # The build backend, so that reinstalling the package needs no download.
  pip install --only-binary=:all: "setuptools>=77" wheel
  # Wheels only: nothing is compiled on the machine.
  pip install --only-binary=:all: "./clients/python[test]"
  echo "$want" >"$stamp"
fi
# Builds from a copy: an in-tree build leaves build/ and *.egg-info behind.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r clients/python/. "$tmp/"
rm -rf "$tmp/tests" "$tmp/build" "$tmp"/src/*.egg-info
pip install --no-deps --no-build-isolation --force-reinstall "$tmp"
echo "$venv/bin/python"
