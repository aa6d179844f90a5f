#!/bin/sh
# Builds the hubwarden binary exactly as the images do. Both Dockerfiles RUN
# this script and images/build-check.sh runs it on the host, so the flags the
# check proves are the flags the images ship.
#
# Usage: images/go-build.sh OUTPUT [VERSION]   (run from the repository root)
set -eu
out=${1:?usage: go-build.sh OUTPUT [VERSION]}
version=${2:-dev}
CGO_ENABLED=0 exec go build -trimpath -mod=readonly \
	-ldflags "-s -w -X main.version=${version}" \
	-o "$out" ./sidecar
