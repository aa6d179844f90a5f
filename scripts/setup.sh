#!/usr/bin/env bash
# Installs what hubwarden's tests, demo and benchmarks need on a fresh Debian 12
# machine. Idempotent; run as root. Set HUBWARDEN_SETUP_E2E=0 to skip the
# JupyterHub parts.
set -euo pipefail
need=(iptables nftables conntrack iperf3 curl iproute2 tcpdump iputils-ping procps util-linux python3-venv)
if [ "${HUBWARDEN_SETUP_E2E:-1}" = 1 ]; then
  need+=(jupyterhub python3-websocket dnsmasq-base bind9-dnsutils python3-yaml)
  # The notebook side's browser test drives Debian's Chromium with Playwright
  # (requirements/test.txt); Playwright never downloads a browser of its own.
  need+=(chromium)
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
# The Python stack z2jh 4.4 ships, hash-locked (requirements/README.md).
./scripts/python-env.sh
