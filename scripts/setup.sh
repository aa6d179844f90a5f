#!/usr/bin/env bash
# Installs what hubwarden's tests, demo and benchmarks need on a fresh Debian 12
# machine. Idempotent; run as root. Set HUBWARDEN_SETUP_E2E=0 to skip the
# JupyterHub parts.
#
# The JupyterHub stack comes from PyPI (scripts/python-env.sh, the pins of
# requirements/), configurable-http-proxy from npm (the e2e bed installs it on
# first use), the browser of the e2e proof is Debian's Chromium (chromedp
# drives it; nothing ever downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
# linux-perf: bench row 1 samples where a flow's cycles go (without it the
# row says so and the rest runs).
need=(iptables nftables conntrack iperf3 curl iproute2 tcpdump iputils-ping procps util-linux libcap2-bin python3-venv linux-perf)
if [ "${HUBWARDEN_SETUP_E2E:-1}" = 1 ]; then
  # python3-websocket: the guard's capture driver (guard/testdata/capture).
  need+=(dnsmasq-base bind9-dnsutils python3-yaml python3-websocket chromium chromium-driver)
  command -v npm >/dev/null || need+=(nodejs npm)
fi
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "setup: Go is not installed (need Go >= 1.25 on PATH)" >&2; exit 1; }
go mod download
(cd e2e && go mod download)
(cd e2e/deploytest && go mod download)
# The Python stack z2jh 4.4 ships, hash-locked (requirements/README.md).
./scripts/python-env.sh
