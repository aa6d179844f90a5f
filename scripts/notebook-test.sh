#!/usr/bin/env bash
# Runs the notebook side's pytest suite (notebook/tests) against the
# hash-locked test environment (/opt/hubwarden/venv/test, jupyter-server
# 2.19.0): the package is installed into a throwaway directory on PYTHONPATH,
# so the root-owned environment stays as its lock says. Arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venvs=${HUBWARDEN_VENV_ROOT:-/opt/hubwarden/venv}
py=${HWNB_TEST_PYTHON:-$venvs/test/bin/python}
[ -x "$py" ] || { echo "notebook-test: no $py (run make setup)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/hubwarden-nbtest.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# Build from a copy: pip builds a local directory in place (build/, egg-info).
cp -r "$root/notebook" "$tmp/src"
rm -rf "$tmp/src/build" "$tmp/src"/*.egg-info
"$py" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
  --no-build-isolation --target "$tmp/site" "$tmp/src" >/dev/null
cd "$root/notebook"
PYTHONPATH="$tmp/site:$root/notebook" PYTHONDONTWRITEBYTECODE=1 \
  "$py" -m pytest -p no:cacheprovider "$@"
