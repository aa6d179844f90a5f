#!/usr/bin/env bash
# Regenerates the variable lists in sidecar/doc.go and README.md from
# `hubwarden --help` (tests fail when either is out of date).
set -euo pipefail
cd "$(dirname "$0")/.."
help=$(go run ./sidecar --help | sed -n '/^VARIABLE/,$p')
python3 - "$help" <<'PY'
import re, sys
help = sys.argv[1].splitlines()
# doc.go: the indented block after the "prints this list" paragraph.
p = 'sidecar/doc.go'
s = open(p).read().splitlines()
out, i = [], 0
while i < len(s):
    if s[i].startswith('//\tVARIABLE'):
        while i < len(s) and s[i].startswith('//\t'):
            i += 1
        out += ['//\t' + l for l in help]
        continue
    out.append(s[i]); i += 1
open(p, 'w').write('\n'.join(out) + '\n')
# README.md: the table rows after "| variable | default | meaning |".
p = 'README.md'
s = open(p).read().splitlines()
out, i = [], 0
while i < len(s):
    out.append(s[i])
    if s[i] == '| variable | default | meaning |':
        out.append(s[i + 1]); i += 2
        while i < len(s) and s[i].startswith('| `HUBWARDEN_'):
            i += 1
        for l in help[1:]:
            m = re.match(r'(\S+)\s+(\S+)\s+(.*)', l)
            out.append('| `%s` | `%s` | %s |' % m.groups())
        continue
    i += 1
open(p, 'w').write('\n'.join(out) + '\n')
PY
gofmt -w sidecar/doc.go
