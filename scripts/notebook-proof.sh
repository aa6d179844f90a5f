#!/usr/bin/env bash
# The lockdown proof suite (notebook/proof): as root, in a network namespace
# of its own (loopback only), JupyterHub 5.5.0 spawns two unprivileged users'
# servers, one locked, one without the lockdown, and every known way to
# subvert the server is tried on both. Removes the namespace, the users and
# the files it made. Arguments go to `python -m proof` (e.g. --browser).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${HUBWARDEN_TEST_PYTHON:-/opt/hubwarden/venv/test/bin/python}
[ "$(id -u)" = 0 ] || { echo "notebook-proof: needs root (users, a network namespace)" >&2; exit 1; }
# configurable-http-proxy 5.2.0 (the version z2jh ships), from npm into the
# same cache the e2e bed uses.
if [ -z "${HUBWARDEN_CHP:-}" ]; then
	chp_prefix=$root/e2e/netns/work/cache/chp-5.2.0
	export HUBWARDEN_CHP=$chp_prefix/node_modules/.bin/configurable-http-proxy
	[ -x "$HUBWARDEN_CHP" ] || npm install --silent --no-audit --no-fund --prefix "$chp_prefix" configurable-http-proxy@5.2.0 >/dev/null
fi
ns=hwnbproof$$
run=/tmp/hubwarden-nbproof-$$
mkdir -m 0755 "$run"
cleanup() {
	ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	[ "${HUBWARDEN_PROOF_KEEP:-0}" = 1 ] || rm -rf "$run"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
cd "$root/notebook"
ip netns exec "$ns" env PYTHONDONTWRITEBYTECODE=1 "$py" -m proof --run-dir "$run" "$@"
