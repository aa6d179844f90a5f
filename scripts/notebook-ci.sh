#!/usr/bin/env bash
# What `make ci` runs of the notebook side (root), about five minutes on two
# cores: the pytest suite (scripts/notebook-test.sh) and the CI subset of the
# lockdown proof (scripts/notebook-proof.sh --ci: the attempts marked for CI,
# the browser for the baseline and its control), at the same time. Each
# one's output is printed when both are done, with its duration; the exit
# status is non-zero when either failed. The full proof is
# `make notebook-proof`. HWNB_ARTIFACTS=DIR keeps the proof's
# screenshots and results.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
logs=$(mktemp -d /tmp/hubwarden-nbci.XXXXXX)
trap 'rm -rf "$logs"' EXIT
proof_args=(--ci --browser some --parallel 3)

timed() { # name command...: runs it, logging its output, status and duration
	local name=$1 start
	shift
	start=$(date +%s)
	set +e
	"$@" >"$logs/$name.log" 2>&1
	echo $? >"$logs/$name.rc"
	set -e
	echo $(($(date +%s) - start)) >"$logs/$name.secs"
}

start=$(date +%s)
timed pytest "$root/scripts/notebook-test.sh" -q &
timed proof "$root/scripts/notebook-proof.sh" "${proof_args[@]}" &
wait
status=0
for name in pytest proof; do
	echo "=== notebook-ci: $name (exit $(cat "$logs/$name.rc"), $(cat "$logs/$name.secs") s)"
	cat "$logs/$name.log"
	[ "$(cat "$logs/$name.rc")" = 0 ] || status=1
done
echo "=== notebook-ci: pytest $(cat "$logs/pytest.secs") s and proof $(cat "$logs/proof.secs") s at once: $(($(date +%s) - start)) s"
exit $status
