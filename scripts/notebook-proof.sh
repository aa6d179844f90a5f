#!/usr/bin/env bash
# The lockdown proof suite (notebook/proof): as root, in a network namespace
# of its own (loopback only), JupyterHub 5.5.0 spawns unprivileged users'
# servers, for each attempt one from the locked install and one without the
# lockdown, and tries every known way to subvert the server on both.
# Removes the namespace, the users and the files it made. Arguments go to
# `python -m proof`: --browser none|some|all, --ci (the CI subset),
# --only <ids>, --parallel N, --artifacts DIR (screenshots, results.json).
# The Python environments come from $HUBWARDEN_VENV_ROOT (scripts/python-env.sh;
# default /opt/hubwarden/venv). HWNB_ARTIFACTS=DIR keeps the
# screenshots and results.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venvs=${HUBWARDEN_VENV_ROOT:-/opt/hubwarden/venv}
py=${HWNB_TEST_PYTHON:-$venvs/test/bin/python}
export HWNB_HUB_VENV=${HWNB_HUB_VENV:-$venvs/hub}
export HWNB_SINGLEUSER_VENV=${HWNB_SINGLEUSER_VENV:-$venvs/singleuser}
[ "$(id -u)" = 0 ] || { echo "notebook-proof: needs root (users, a network namespace)" >&2; exit 1; }
[ -x "$py" ] || { echo "notebook-proof: no $py (run make setup)" >&2; exit 1; }
# configurable-http-proxy 5.2.0 (the version z2jh ships), from npm into the
# same cache the e2e bed uses.
if [ -z "${HWNB_CHP:-}" ]; then
	chp_prefix=$root/e2e/netns/work/cache/chp-5.2.0
	export HWNB_CHP=$chp_prefix/node_modules/.bin/configurable-http-proxy
	[ -x "$HWNB_CHP" ] || npm install --silent --no-audit --no-fund --prefix "$chp_prefix" configurable-http-proxy@5.2.0 >/dev/null
fi
ns=hwnbproof$$
run=/tmp/hubwarden-nbproof-$$
mkdir -m 0755 "$run"
cleanup() {
	ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	[ "${HWNB_PROOF_KEEP:-0}" = 1 ] || rm -rf "$run"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
args=("$@")
[ -z "${HWNB_ARTIFACTS:-}" ] || args+=(--artifacts "$HWNB_ARTIFACTS")
cd "$root/notebook"
# On SIGTERM or SIGINT the proof removes its users and processes itself;
# wait for it before the namespace goes.
child=
stop() {
	[ -z "$child" ] || { kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; }
	exit 143
}
trap stop TERM INT
ip netns exec "$ns" env PYTHONDONTWRITEBYTECODE=1 "$py" -m proof --run-dir "$run" "${args[@]}" &
child=$!
wait "$child"
