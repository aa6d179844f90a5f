#!/usr/bin/env bash
# `make demo`: on a fresh Debian 12 machine, as root, install what the e2e bed
# needs, build hubwarden, build the bed (the stack z2jh 4.4 ships: JupyterHub
# 5.5.0, configurable-http-proxy 5.2.0, jupyterhub-singleuser with
# jupyter-server 2.19.0 and JupyterLab 4.5.8 in two user pods made of network
# namespaces, Debian's Chromium as the user's browser), run the proof with and
# without hubwarden side by side, print the before/after table, clean up, and
# exit non-zero if any protection failed or could not be proven.
#
#   e2e/demo.sh                            the whole proof (about 15 minutes)
#   HWE2E_BROWSER_ROUNDS=6 e2e/demo.sh     fewer browser rounds (p95 of fewer samples)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (it creates network namespaces and two test users)" >&2
  exit 1
fi
./scripts/setup.sh
if ! command -v npm >/dev/null; then
  echo "demo: installing nodejs and npm (for configurable-http-proxy 5.2.0)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
cd e2e
# A run killed earlier may have left namespaces or users behind.
go run ./netns/cmd/hwe2e cleanup
mkdir -p netns/work
stamp=$(date -u +%Y%m%dT%H%M%SZ)
report=netns/work/demo-$stamp.txt   # netns/work is git-ignored
log=netns/work/demo-$stamp.log
set +e
HWE2E_STRICT=1 HWE2E_REPORT="$PWD/$report" go test -tags e2e -count=1 -timeout 40m -run '^TestE2EProof$' -v ./netns/ > "$log" 2>&1
rc=$?
set -e
grep -E '^\s+(proof|proof_browser|bed)_test.go:|^(=== RUN|--- |    --- )' "$log" || true
if [ -s "$report" ]; then cat "$report"; else tail -50 "$log"; fi
echo "table: e2e/$report, screenshots: e2e/${report%.txt}-jupyterlab-{without,with}.png, full log: e2e/$log"
exit $rc
