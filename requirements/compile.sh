#!/usr/bin/env bash
# Regenerates the hash-locked requirement files from the *.in files, for
# Debian 12's python3 (3.11) on x86_64. The *.in pins come from the Zero to
# JupyterHub 4.4.0 images (../shared/z2jh/hub-requirements.txt and
# singleuser-sample-requirements.txt, the pinned lines copied unchanged) plus
# what the tests add. Needs PyPI; takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
/usr/bin/python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q pip-tools
compile() { # out in [constraints]
  local extra=()
  [ $# -gt 2 ] && extra=(-c "$3")
  PIP_FIND_LINKS= "$tools/venv/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-find-links --no-header "${extra[@]}" -o "$1" "$2"
}
compile hub.txt hub.in
compile singleuser.txt singleuser.in
compile test.txt test.in singleuser.txt
