#!/bin/sh
# make bench: hubwarden against the alternatives, side by side, in fresh
# network namespaces (root). Writes BENCHMARKS.md and prints the table.
#   BENCH_QUICK=1  smoke mode (< 2 min): tiny windows, one repetition; writes
#                  $BENCH_OUT (default: a temp file, not BENCHMARKS.md) and
#                  fails unless every row of the table is there.
#   BENCH_HUBWARDEN=path  a prebuilt binary instead of `go build ./sidecar`.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
if [ "$(id -u)" != 0 ]; then
	echo "bench: needs root (network namespaces)" >&2
	exit 1
fi
if [ "${BENCH_QUICK:-}" = 1 ]; then
	if [ -n "${BENCH_OUT:-}" ]; then
		out=$BENCH_OUT
	else
		out=$(mktemp /tmp/hubwarden-bench-smoke.XXXXXX)
		tmpout=$out
	fi
	cmd="BENCH_QUICK=1 make bench-smoke"
	timeout=5m
else
	out=${BENCH_OUT:-$PWD/BENCHMARKS.md}
	cmd="make bench"
	timeout=35m
fi
# Row 1 through the real proxy needs the e2e bed (JupyterHub, CHP): run it
# first; if the bed is unavailable the row says so.
proxyrow=$(mktemp /tmp/hubwarden-bench-proxy.XXXXXX)
trap 'rm -f "$proxyrow" ${tmpout:-}' EXIT
(cd e2e && HWE2E_BENCH_OUT=$proxyrow BENCH_QUICK=${BENCH_QUICK:-} \
	$GO test -tags e2e -count=1 -timeout 8m -run '^TestE2EBenchProxy$' -v ./netns/ >&2) ||
	echo "bench: the proxy row (e2e TestE2EBenchProxy) failed; see above" >&2
echo "bench: load before: $(cut -d' ' -f1-3 /proc/loadavg); writing $out" >&2
BENCH_PROXY_ROW=$proxyrow BENCH_OUT=$out BENCH_CMD=$cmd BENCH_NOTES=${BENCH_NOTES:-} \
	$GO test -tags bench -count=1 -timeout "$timeout" -run '^TestBench$' -v ./bench/ >&2
for n in 1 2 3 4 5 6 7 8; do
	grep -q "^| $n |" "$out" || { echo "bench: row $n missing from $out" >&2; exit 1; }
done
sed -n '/^| # |/,/^$/p' "$out"
