#!/usr/bin/env bash
# Installs the hash-locked Python environments of requirements/ into
# /opt/hubwarden/venv/<name> (root-owned, outside the checkout), each only
# when its lock file changed since it was installed. Usage:
#   scripts/python-env.sh [hub] [singleuser] [test]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${HUBWARDEN_VENV_ROOT:-/opt/hubwarden/venv}
envs=("$@")
[ ${#envs[@]} -gt 0 ] || envs=(hub singleuser test)

pypi_reachable() {
  /usr/bin/python3 - <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=20).read(1)
except Exception as e:
    print(f"python-env: cannot reach PyPI (https://pypi.org): {e}", file=sys.stderr)
    sys.exit(1)
PY
}

checked=0
for name in "${envs[@]}"; do
  lock=requirements/$name.txt
  [ -f "$lock" ] || { echo "python-env: no lock file $lock" >&2; exit 1; }
  venv=$root/$name
  want=$(sha256sum "$lock" | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.lock-sha256" 2>/dev/null)" = "$want" ]; then
    continue
  fi
  if [ $checked = 0 ]; then
    pypi_reachable || { echo "python-env: the Python environments (JupyterHub 5.5.0, jupyter-server 2.19.0, JupyterLab 4.5.8) come from PyPI; set-up cannot go on without it" >&2; exit 1; }
    checked=1
  fi
  echo "python-env: installing $venv from $lock"
  # A half-installed environment has no .lock-sha256 and is redone next time.
  rm -rf "$venv"
  mkdir -p "$root"
  /usr/bin/python3 -m venv "$venv"
  # The lock pins every package with its hashes; nothing else is fetched.
  PIP_FIND_LINKS= "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    --require-hashes --prefer-binary --no-deps -r "$lock"
  "$venv/bin/pip" check --disable-pip-version-check >/dev/null || { "$venv/bin/pip" check; echo "python-env: $lock is not a consistent set (run requirements/compile.sh)" >&2; exit 1; }
  echo "$want" > "$venv/.lock-sha256"
  chmod -R go-w "$venv"
done
