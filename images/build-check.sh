#!/usr/bin/env bash
# Checks the images without a container engine, in a few seconds:
#  (a) builds hubwarden with the images' own build script (images/go-build.sh),
#      checks the binary is static and stripped, and runs `--help` and `version`;
#  (b) checks every COPY/ADD source of every Dockerfile exists in the repository,
#      and that the hubwarden runtime stage installs iptables and checks for
#      /bin/sh and every iptables tool hubwarden may run;
#  (c) parses the single-user image's JSON and Python config files.
# Run from anywhere; exits non-zero with one line per problem.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
problem() { echo "build-check: $*" >&2; fail=1; }

# (a) the binary, built exactly as in the images.
version=build-check-$$
./images/go-build.sh "$tmp/hubwarden" "$version"
info=$(file -b "$tmp/hubwarden")
case $info in
*"statically linked"*) ;;
*) problem "hubwarden is not statically linked: $info" ;;
esac
case $info in
*", stripped"*) ;;
*) problem "hubwarden is not stripped (-s -w missing?): $info" ;;
esac
if ldd "$tmp/hubwarden" >/dev/null 2>&1; then
	problem "ldd finds dynamic dependencies in hubwarden"
fi
if ! "$tmp/hubwarden" --help >"$tmp/help" 2>&1; then
	problem "hubwarden --help failed: $(head -3 "$tmp/help")"
fi
grep -q '^HUBWARDEN_HEALTH_ADDR' "$tmp/help" || problem "hubwarden --help does not list HUBWARDEN_HEALTH_ADDR"
got=$("$tmp/hubwarden" version 2>&1) || problem "hubwarden version failed: $got"
[ "$got" = "hubwarden $version" ] || problem "hubwarden version printed \"$got\", want \"hubwarden $version\" (is -X main.version applied?)"
if go version -m "$tmp/hubwarden" | grep -q 'CGO_ENABLED=1'; then
	problem "hubwarden was built with cgo"
fi
go version -m "$tmp/hubwarden" | grep -q -- '-trimpath=true' || problem "hubwarden was built without -trimpath"

# (b) Dockerfile sources. The build context is the repository root.
for df in images/*/Dockerfile; do
	# Join continuation lines, then take COPY/ADD lines without --from.
	sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$df" |
		grep -E '^[[:space:]]*(COPY|ADD)[[:space:]]' | grep -v -- '--from=' |
		while read -r _ args; do
			# Drop flags (--chown=..., --link); the last word is the destination.
			set -- $args
			srcs=()
			for a in "$@"; do
				case $a in --*) ;; *) srcs+=("$a") ;; esac
			done
			unset 'srcs[${#srcs[@]}-1]'
			for s in "${srcs[@]}"; do
				# shellcheck disable=SC2086 # globs in COPY sources are intended
				ls -d $s >/dev/null 2>&1 || echo "$df: COPY source $s does not exist"
			done
		done
done >"$tmp/missing"
[ ! -s "$tmp/missing" ] || { problem "missing files:"; cat "$tmp/missing" >&2; }
grep -q 'images/go-build.sh' images/hubwarden/Dockerfile || problem "images/hubwarden/Dockerfile does not build with images/go-build.sh"
grep -q 'images/go-build.sh' images/singleuser/Dockerfile || problem "images/singleuser/Dockerfile does not build with images/go-build.sh"

# The runtime stage is everything after the last FROM.
runtime=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' images/hubwarden/Dockerfile)
grep -q 'apt-get install .*iptables' <<<"$runtime" || problem "hubwarden runtime stage does not install iptables"
grep -q 'XTABLES_LOCKFILE=/run/hubwarden/' <<<"$runtime" || problem "hubwarden runtime stage does not move the xtables lock into the state emptyDir"
for t in sh; do
	grep -qw "$t" <<<"$runtime" || problem "hubwarden runtime stage does not check for /bin/$t"
done
for fam in iptables ip6tables; do
	for be in legacy nft; do
		for suffix in "" -save -restore; do
			t=$fam-$be$suffix
			grep -qE "(^|[[:space:]])$t([[:space:]]|;|\$)" <<<"$runtime" || problem "hubwarden runtime stage does not check for $t"
		done
	done
done
# On a Debian host, the package the image installs must ship those tools under
# the names checked (same distribution release as the runtime stage: bookworm).
if command -v dpkg >/dev/null && dpkg -L iptables >"$tmp/iptables.list" 2>/dev/null; then
	for fam in iptables ip6tables; do
		for be in legacy nft; do
			for suffix in "" -save -restore; do
				grep -q "/$fam-$be$suffix\$" "$tmp/iptables.list" || problem "Debian's iptables package has no $fam-$be$suffix"
			done
		done
	done
fi

# (c) single-user config files parse.
for f in images/singleuser/*.json; do
	python3 -m json.tool "$f" >/dev/null || problem "$f is not valid JSON"
done
for f in images/singleuser/*.py; do
	python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$f" || problem "$f does not parse as Python"
done
python3 - images/singleuser/page_config.json <<'PY' || fail=1
import json, sys
want = {
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
}
cfg = json.load(open(sys.argv[1]))
for key in ("disabledExtensions", "lockedExtensions"):
    got = {k for k, v in cfg.get(key, {}).items() if v is True}
    if want - got:
        print(f"build-check: {sys.argv[1]}: {key} lacks {sorted(want - got)}", file=sys.stderr)
        sys.exit(1)
PY

# The server config's fail-closed guard: it must refuse a server without the
# lockdown and accept one with it. Needs jupyter_core: the single-user
# environment of scripts/python-env.sh has it (jupyter-core of the z2jh user
# image's pins).
guard_py=
for py in "${HUBWARDEN_VENV_ROOT:-/opt/hubwarden/venv}/singleuser/bin/python" /usr/bin/python3 python3; do
	if "$py" -c 'import jupyter_core' 2>/dev/null; then
		guard_py=$py
		break
	fi
done
if [ -n "$guard_py" ]; then
	cat >"$tmp/guardrun.py" <<'PY'
import sys
ns = {"get_config": lambda: None}
try:
    exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), ns)
    print("started")
except SystemExit as e:
    print("refused:", e)
PY
	guard=images/singleuser/jupyter_server_config.py
	got=$(env -i HOME="$tmp" PATH="$PATH" "$guard_py" "$tmp/guardrun.py" "$guard")
	case $got in refused:*) ;; *) problem "$guard started a server without the lockdown: $got" ;; esac
	got=$(env -i HOME="$tmp" PATH="$PATH" JUPYTERHUB_DISABLE_USER_CONFIG=1 PYTHONNOUSERSITE=1 \
		JUPYTER_CONFIG_DIR=/usr/local/etc/jupyter-user "$guard_py" "$tmp/guardrun.py" "$guard")
	[ "$got" = started ] || problem "$guard refused a server with the lockdown: $got"
	grep -q 'JUPYTER_CONFIG_DIR=/usr/local/etc/jupyter-user' images/singleuser/Dockerfile ||
		problem "images/singleuser/Dockerfile does not set the JUPYTER_CONFIG_DIR the guard was checked with"
else
	echo "build-check: no jupyter_core for python3: the server config guard was not exercised" >&2
fi

if [ "$fail" -ne 0 ]; then
	echo "build-check: FAILED" >&2
	exit 1
fi
echo "build-check: ok ($(du -h "$tmp/hubwarden" | cut -f1) static binary, $(ls images/*/Dockerfile | wc -l) Dockerfiles)"
