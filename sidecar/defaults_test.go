package main

import (
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/units"
)

// TestDocsStateTheCodesDefaults keeps every hand-written statement of a
// default true to rawConfig, whose tags are the one source of every
// variable's name, default and meaning (the README table and the package doc
// are generated from them by scripts/gen-vars.sh). It reads every Markdown,
// YAML and shell file of the repository and fails when one names a
// HUBWARDEN_ variable that hubwarden does not read, or presents a value as a
// variable's default that is not its default.
//
// A variable is named HUBWARDEN_X or, as the docs often shorten it, X. A
// value is presented as the default by:
//
//   - a Markdown table with a "default" column, in the row of a variable;
//   - "X (default V)", "X, default V", "X (V by default)" and "V (X default)",
//     in prose or in a YAML comment;
//   - a value written right after a variable that takes numbers, durations,
//     sizes, rates or addresses: "`DUMP_INTERVAL` (1s)", "POD_REFILL 256
//     KiB/s". A value that is not the default is written as a setting,
//     X=V, and is not checked;
//   - a YAML env entry (commented out or not) under a comment that says
//     "default", or with "default" in its own comment;
//   - ${HUBWARDEN_X:-V} in a shell script.
//
// Values are compared as the variable's kind, so 256KiB/s and 262,144 B/s
// are the same rate. A variable whose default is empty may be described
// instead ("-", "empty", or words from its meaning's "empty: ..." clause).
// Code blocks in Markdown, and records of a run (BENCHMARKS.md), are checked
// for names only.
func TestDocsStateTheCodesDefaults(t *testing.T) {
	files := docFiles(t)
	for _, want := range []string{"README.md", "docs/deploy-z2jh.md", "z2jh-values/hubwarden.yaml"} {
		if !slices.Contains(files, want) {
			t.Fatalf("%s not among the files read: %q", want, files)
		}
	}
	s := newDocScan()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		s.file(f, string(b))
	}
	for _, p := range s.problems {
		t.Error(p)
	}
}

// docVar is one variable as rawConfig defines it.
type docVar struct {
	name, def, desc string // name is HUBWARDEN_X
	kind            *valueKind
}

// valueKind reads one kind of value; a variable has the first kind that
// reads its default, and nil (a free-form string) when none does.
type valueKind struct {
	name  string
	parse func(string) (any, error)
}

// numeric drops the thousands separators and spaces docs write in numbers
// ("262,144 B/s", "10 s").
func numeric(s string) string {
	return strings.NewReplacer(",", "", " ", "", "\n", "").Replace(s)
}

var valueKinds = []*valueKind{
	{"boolean", func(s string) (any, error) { return strconv.ParseBool(s) }},
	{"number", func(s string) (any, error) { return strconv.ParseUint(numeric(s), 0, 64) }},
	{"duration", func(s string) (any, error) { return time.ParseDuration(numeric(s)) }},
	{"size", func(s string) (any, error) { return units.ParseSize(numeric(s)) }},
	{"rate", func(s string) (any, error) { return units.ParseRate(numeric(s)) }},
	{"IP:port", func(s string) (any, error) { return netip.ParseAddrPort(s) }},
}

// docVars returns rawConfig's variables by name.
func docVars() map[string]docVar {
	vars := map[string]docVar{}
	t := reflect.TypeFor[rawConfig]()
	for i := range t.NumField() {
		f := t.Field(i)
		v := docVar{name: envPrefix + "_" + f.Tag.Get("envconfig"), def: f.Tag.Get("default"), desc: f.Tag.Get("desc")}
		for _, k := range valueKinds {
			if _, err := k.parse(v.def); v.def != "" && err == nil {
				v.kind = k
				break
			}
		}
		vars[v.name] = v
	}
	return vars
}

// harnessVars are HUBWARDEN_ variables that the test and set-up scripts
// read, not hubwarden, with the file that reads each.
var harnessVars = map[string]string{
	"HUBWARDEN_BIN":          "internal/hwtest/hwtest_linux.go",
	"HUBWARDEN_REQUIRE_VENV": "e2e/deploytest/render_test.go",
	"HUBWARDEN_SETUP_E2E":    "scripts/setup.sh",
	"HUBWARDEN_VENV_ROOT":    "scripts/python-env.sh",
}

// cleanValue strips the Markdown and YAML around a value as written.
func cleanValue(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimRight(s, ".,;")
	for _, q := range []string{"**", "`", `"`, "'"} {
		if len(s) >= 2*len(q) && strings.HasPrefix(s, q) && strings.HasSuffix(s, q) {
			s = s[len(q) : len(s)-len(q)]
		}
	}
	return strings.TrimSpace(s)
}

var wordRE = regexp.MustCompile(`[A-Za-z0-9_./]+`)

// describesEmpty reports whether text describes an empty default: "-",
// "empty", or a word of the meaning's "empty: ..." clause.
func describesEmpty(desc, text string) bool {
	switch strings.ToLower(strings.Trim(text, "()")) {
	case "", "-", "empty", "none", "unset":
		return true
	}
	_, clause, ok := strings.Cut(desc, "empty: ")
	if !ok {
		return false
	}
	clause, _, _ = strings.Cut(clause, ";")
	words := func(s string) []string {
		var out []string
		for _, w := range wordRE.FindAllString(strings.ToLower(s), -1) {
			w = strings.TrimSuffix(strings.Trim(w, "."), "s")
			if len(w) >= 4 && w != "default" && w != "empty" && w != "value" {
				out = append(out, w)
			}
		}
		return out
	}
	for _, w := range words(text) {
		if slices.Contains(words(clause), w) {
			return true
		}
	}
	return false
}

// check returns what is wrong with text given as v's default, or "".
func (v docVar) check(text string) string {
	text = cleanValue(text)
	where := "rawConfig in sidecar/config.go"
	switch {
	case v.def == "":
		if describesEmpty(v.desc, text) {
			return ""
		}
		return fmt.Sprintf("gives %s the default %q, but its default is empty (%s: %s)", v.name, text, where, v.desc)
	case v.kind == nil:
		if strings.EqualFold(text, v.def) {
			return ""
		}
	default:
		want, _ := v.kind.parse(v.def)
		got, err := v.kind.parse(text)
		if err != nil {
			return fmt.Sprintf("gives %s the default %q, which is not a %s (%s: %s)", v.name, text, v.kind.name, where, v.def)
		}
		if got == want {
			return ""
		}
	}
	return fmt.Sprintf("gives %s the default %q, but its default is %s (%s)", v.name, text, v.def, where)
}

// docScan collects what is wrong in the files it is given.
type docScan struct {
	vars     map[string]docVar
	bare     map[string]string // X -> HUBWARDEN_X
	problems []string
}

func newDocScan() *docScan {
	s := &docScan{vars: docVars(), bare: map[string]string{}}
	for n := range s.vars {
		s.bare[strings.TrimPrefix(n, envPrefix+"_")] = n
	}
	return s
}

func (s *docScan) problem(file string, line int, format string, args ...any) {
	s.problems = append(s.problems, fmt.Sprintf("%s:%d: %s", file, line, fmt.Sprintf(format, args...)))
}

// claim checks text given as the default of the variable called name.
func (s *docScan) claim(file string, line int, name, text string) {
	if msg := s.vars[name].check(text); msg != "" {
		s.problem(file, line, "%s", msg)
	}
}

// file checks one file's content; path is relative to the repository.
func (s *docScan) file(path, content string) {
	lines := strings.Split(content, "\n")
	s.names(path, lines)
	if records[path] {
		return
	}
	switch filepath.Ext(path) {
	case ".md":
		s.markdown(path, lines)
	case ".yaml", ".yml":
		s.yaml(path, lines)
	case ".sh":
		s.shell(path, content)
	}
}

var (
	mentionRE    = regexp.MustCompile(`HUBWARDEN_[A-Z0-9_]*`)
	deprecatedRE = regexp.MustCompile(`(?i)deprecated|ignored|no effect|no longer`)
)

// names checks every HUBWARDEN_ name: hubwarden reads it, or Kubernetes
// injects it (service links), or a script reads it (harnessVars), or it is
// deprecated and its paragraph says so. HUBWARDEN_X* must match a variable;
// HUBWARDEN_... is a placeholder.
func (s *docScan) names(path string, lines []string) {
	for i, l := range lines {
		for _, m := range mentionRE.FindAllStringIndex(l, -1) {
			if m[0] > 0 && isIdent(l[m[0]-1]) {
				continue
			}
			name := strings.TrimRight(l[m[0]:m[1]], "_")
			glob := strings.HasPrefix(l[m[1]:], "*")
			if name == envPrefix && !glob || m[1] < len(l) && l[m[1]] >= 'a' && l[m[1]] <= 'z' {
				continue // HUBWARDEN_... or HUBWARDEN_x: not a name
			}
			var matches []string
			for n := range s.vars {
				if n == name || glob && strings.HasPrefix(n, name) {
					matches = append(matches, n)
				}
			}
			if len(matches) > 0 || serviceLink(name) || harnessVars[name] != "" {
				continue
			}
			for n := range deprecated {
				if n == name || glob && strings.HasPrefix(n, name) {
					matches = append(matches, n)
				}
			}
			switch {
			case len(matches) == 0:
				s.problem(path, i+1, "names %s, which hubwarden does not read (sidecar/config.go)", l[m[0]:m[1]])
			case !deprecatedRE.MatchString(paragraph(lines, i)):
				s.problem(path, i+1, "names %s, which has no effect any more, without saying so (deprecated in sidecar/config.go)", l[m[0]:m[1]])
			}
		}
	}
}

func isIdent(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// paragraph returns the non-blank lines around line i.
func paragraph(lines []string, i int) string {
	a, b := i, i+1
	for a > 0 && strings.TrimSpace(lines[a-1]) != "" {
		a--
	}
	for b < len(lines) && strings.TrimSpace(lines[b]) != "" {
		b++
	}
	return strings.Join(lines[a:b], "\n")
}

var (
	fenceRE     = regexp.MustCompile("^\\s*(```|~~~)")
	tableSepRE  = regexp.MustCompile(`^\|\s*:?-{3,}`)
	tableCellRE = regexp.MustCompile(`[^|]*\|`)
)

// cells splits a table row (a | in a cell's text ends the cell too, which
// only matters for cells after it).
func cells(row string) []string {
	var out []string
	for _, c := range tableCellRE.FindAllString(strings.TrimPrefix(strings.TrimSpace(row), "|"), -1) {
		out = append(out, strings.TrimSpace(strings.TrimSuffix(c, "|")))
	}
	return out
}

// markdown checks tables with a default column and the prose outside code
// blocks, paragraph by paragraph (each table row on its own).
func (s *docScan) markdown(path string, lines []string) {
	fence := false
	defCol, varCol := -1, 0
	var para []string
	start := 0
	flush := func() {
		if len(para) > 0 {
			s.prose(path, start, strings.Join(para, "\n"))
		}
		para = nil
	}
	for i, l := range lines {
		if fenceRE.MatchString(l) {
			flush()
			fence = !fence
			continue
		}
		if fence {
			continue
		}
		if !strings.HasPrefix(strings.TrimSpace(l), "|") {
			defCol = -1
			if strings.TrimSpace(l) == "" {
				flush()
				continue
			}
			if len(para) == 0 {
				start = i + 1
			}
			para = append(para, l)
			continue
		}
		flush()
		s.prose(path, i+1, l)
		switch {
		case i+1 < len(lines) && tableSepRE.MatchString(strings.TrimSpace(lines[i+1])):
			defCol, varCol = -1, 0
			for j, c := range cells(l) {
				switch strings.ToLower(cleanValue(c)) {
				case "default":
					defCol = j
				case "variable":
					varCol = j
				}
			}
		case defCol >= 0:
			c := cells(l)
			if len(c) <= defCol || len(c) <= varCol {
				continue
			}
			if name, ok := s.lookup(cleanValue(c[varCol])); ok {
				s.claim(path, i+1, name, c[defCol])
			}
		}
	}
	flush()
}

// lookup returns the variable called n (HUBWARDEN_X or X).
func (s *docScan) lookup(n string) (string, bool) {
	if _, ok := s.vars[n]; ok {
		return n, true
	}
	full, ok := s.bare[n]
	return full, ok
}

var (
	tokenRE = regexp.MustCompile(`[A-Z][A-Z0-9_]*[A-Z0-9]`)
	// A value written right after a name: hex, or a number with an optional unit.
	afterRE = regexp.MustCompile("^\\s+\\(?`?(0x[0-9a-fA-F]+|[0-9][0-9,]*(?:\\.[0-9]+)?(?:\\s?[A-Za-z]+(?:/s)?)?)")
	numRE   = regexp.MustCompile(`^(0x[0-9a-fA-F]+|[0-9][0-9,]*(?:\.[0-9]+)?)`)
	// Phrases that give the default of the name before them.
	defaultPhraseREs = []*regexp.Regexp{
		regexp.MustCompile(`\(default:?\s+([^()]*)\)`),
		regexp.MustCompile(`\(([^()]*?)\s+by default\)`),
		regexp.MustCompile(`,\s+default:?\s+([^,;()\n]*?)(?:[,;)\n]|\.\s|\.$|$)`),
	}
	leadingNameRE = regexp.MustCompile("^`?([A-Z][A-Z0-9_]*[A-Z0-9])`?\\s+(.+)$")
	// "V (X default)": the default before the name.
	defaultBeforeRE = regexp.MustCompile("(`[^`]+`|[^\\s(]+)\\s+\\(`?([A-Z][A-Z0-9_]*)`?\\s+default\\)")
)

// mention is where a prose text names a variable.
type mention struct {
	start, end int
	name       string // HUBWARDEN_X
}

// mentions returns the variables text names, as HUBWARDEN_X or X.
func (s *docScan) mentions(text string) []mention {
	var out []mention
	for _, m := range tokenRE.FindAllStringIndex(text, -1) {
		if m[0] > 0 && (isIdent(text[m[0]-1]) || text[m[0]-1] == '-') ||
			m[1] < len(text) && (isIdent(text[m[1]]) || text[m[1]] == '-') {
			continue
		}
		if name, ok := s.lookup(text[m[0]:m[1]]); ok {
			out = append(out, mention{m[0], m[1], name})
		}
	}
	return out
}

// prose checks the defaults a paragraph states; first is its first line.
func (s *docScan) prose(path string, first int, text string) {
	lineAt := func(off int) int { return first + strings.Count(text[:off], "\n") }
	type key struct {
		line int
		name string
	}
	explicit := map[key]bool{}
	claim := func(line int, name, val string) {
		explicit[key{line, name}] = true
		s.claim(path, line, name, val)
	}
	ms := s.mentions(text)
	for _, re := range defaultPhraseREs {
		for _, p := range re.FindAllStringSubmatchIndex(text, -1) {
			// The phrase belongs to the nearest name before it, if that is
			// close and in the same sentence and table cell.
			var owner *mention
			for i := range ms {
				if ms[i].end <= p[0] {
					owner = &ms[i]
				}
			}
			if owner == nil {
				continue
			}
			gap := text[owner.end:p[0]]
			if len(gap) > 40 || strings.Contains(gap, ". ") || strings.Contains(gap, " | ") {
				continue
			}
			name, val := owner.name, text[p[2]:p[3]]
			// "(default X V)" is about X.
			if m := leadingNameRE.FindStringSubmatch(cleanValue(val)); m != nil {
				n, known := s.lookup(m[1])
				_, dep := deprecated[m[1]]
				_, bareDep := deprecated[envPrefix+"_"+m[1]]
				switch {
				case known:
					name, val = n, m[2]
				case dep || bareDep:
					continue // no default any more
				}
			}
			claim(lineAt(p[0]), name, val)
		}
	}
	for _, p := range defaultBeforeRE.FindAllStringSubmatchIndex(text, -1) {
		if name, ok := s.lookup(text[p[4]:p[5]]); ok {
			claim(lineAt(p[0]), name, text[p[2]:p[3]])
		}
	}
	// A value right after a name, unless a phrase above already gave it.
	for _, m := range ms {
		v := s.vars[m.name]
		a := afterRE.FindStringSubmatch(strings.TrimPrefix(text[m.end:], "`"))
		if v.kind == nil || a == nil || explicit[key{lineAt(m.end), m.name}] {
			continue
		}
		val := a[1]
		if _, err := v.kind.parse(val); err != nil {
			val = numRE.FindString(val) // "100 packets": the number
		}
		if _, err := v.kind.parse(val); err != nil {
			continue
		}
		if msg := v.check(val); msg != "" {
			s.problem(path, lineAt(m.end), "%s; a value that is not the default is written as a setting, %s=%s", msg, text[m.start:m.end], numeric(val))
		}
	}
}

var (
	entryNameRE  = regexp.MustCompile(`^\s*(#\s*)?-\s+name:\s*(\S+)\s*(#.*)?$`)
	entryValueRE = regexp.MustCompile(`^\s*(#\s*)?value:\s*(.*?)(\s+#.*)?$`)
	defaultRE    = regexp.MustCompile(`(?i)\bdefaults?\b`)
	notDefaultRE = regexp.MustCompile(`(?i)non-default|not (the )?defaults?|than the defaults?|instead of the defaults?`)
)

func saysDefault(s string) bool { return defaultRE.MatchString(s) && !notDefaultRE.MatchString(s) }

func isEntry(l string) bool { return entryNameRE.MatchString(l) || entryValueRE.MatchString(l) }

func commented(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), "#") }

// comment returns the comment of a YAML line ("" when it has none).
func comment(l string) string {
	if commented(l) {
		return strings.TrimPrefix(strings.TrimSpace(l), "#")
	}
	if _, c, ok := strings.Cut(l, " #"); ok {
		return c
	}
	return ""
}

// yaml checks env entries that say they show the default, and the prose of
// comments (runs of comment lines that are not commented-out entries).
func (s *docScan) yaml(path string, lines []string) {
	var para []string
	start := 0
	flush := func() {
		if len(para) > 0 {
			s.prose(path, start, strings.Join(para, "\n"))
		}
		para = nil
	}
	for i, l := range lines {
		if c := comment(l); c != "" && !isEntry(l) {
			if len(para) == 0 {
				start = i + 1
			}
			para = append(para, c)
		} else {
			flush()
		}

		n := entryNameRE.FindStringSubmatch(l)
		if n == nil || i+1 >= len(lines) {
			continue
		}
		name := n[2]
		val := entryValueRE.FindStringSubmatch(lines[i+1])
		if _, known := s.vars[name]; !known || val == nil || commented(lines[i+1]) != commented(l) {
			continue
		}
		// The comment that heads this run of entries (those commented out
		// like this one), or the entry's own.
		own := n[3] + val[3]
		heading := ""
		j := i - 1
		for j >= 0 && isEntry(lines[j]) && commented(lines[j]) == commented(l) {
			j--
		}
		for ; j >= 0 && commented(lines[j]) && !isEntry(lines[j]); j-- {
			heading = comment(lines[j]) + "\n" + heading
		}
		if saysDefault(own) || saysDefault(heading) {
			s.claim(path, i+2, name, val[2])
		}
	}
	flush()
}

var shellDefaultRE = regexp.MustCompile(`\$\{(HUBWARDEN_[A-Z0-9_]+):?-([^}]*)\}`)

// shell checks ${HUBWARDEN_X:-V}, the default a script assumes.
func (s *docScan) shell(path, content string) {
	for _, m := range shellDefaultRE.FindAllStringSubmatchIndex(content, -1) {
		name := content[m[2]:m[3]]
		if _, ok := s.vars[name]; ok {
			s.claim(path, 1+strings.Count(content[:m[0]], "\n"), name, content[m[4]:m[5]])
		}
	}
}

// records are files that record a run: the configuration they state is the
// run's, not hubwarden's defaults, so only their names are checked.
var records = map[string]bool{
	"BENCHMARKS.md": true, // written by scripts/bench.sh
}

// docFiles returns the repository's Markdown, YAML and shell files, relative
// to its root, without deploytest's fixtures of broken values (bad-*.yaml,
// wrong on purpose, and checked to be refused).
func docFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" || d.Name() == "bin" || d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), "bad-") && filepath.Base(filepath.Dir(p)) == "testdata" {
			return nil
		}
		switch filepath.Ext(p) {
		case ".md", ".yaml", ".yml", ".sh":
			rel, err := filepath.Rel("..", p)
			if err != nil {
				return err
			}
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestHarnessVarsAreRead keeps harnessVars from outliving the scripts.
func TestHarnessVarsAreRead(t *testing.T) {
	for name, file := range harnessVars {
		b, err := os.ReadFile(filepath.Join("..", file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), name) {
			t.Errorf("%s no longer reads %s: remove it from harnessVars", file, name)
		}
	}
}

// TestDocScan shows which forms count as stating a default, and which do not.
func TestDocScan(t *testing.T) {
	tests := []struct {
		name, path, content string
		want                []string
	}{
		{
			name: "table, defaults right and described",
			path: "a.md",
			content: "| variable | default | meaning |\n|---|---|---|\n" +
				"| `HUBWARDEN_POD_REFILL` | `256KiB/s` | x |\n" +
				"| `HUBWARDEN_SLOW_RATE` | 125000 B/s | x |\n" +
				"| `HUBWARDEN_INTERFACE` | (default route's) | x |\n" +
				"| `HUBWARDEN_ALLOW` | - | x |\n" +
				"| `CTMARK` | 1048576 | x |\n",
		},
		{
			name: "table, drifted",
			path: "a.md",
			content: "| variable | default | meaning |\n|---|---|---|\n" +
				"| `HUBWARDEN_POD_REFILL` | 128KiB/s | x |\n" +
				"| `HUBWARDEN_INTERFACE` | eth0 | x |\n" +
				"| `HUBWARDEN_PROMOTE_IDLE` | fast | x |\n",
			want: []string{
				`a.md:3: gives HUBWARDEN_POD_REFILL the default "128KiB/s", but its default is 256KiB/s`,
				`a.md:4: gives HUBWARDEN_INTERFACE the default "eth0", but its default is empty`,
				`a.md:5: gives HUBWARDEN_PROMOTE_IDLE the default "fast", which is not a duration`,
			},
		},
		{
			name:    "a table without a default column",
			path:    "a.md",
			content: "| variable | set to |\n|---|---|\n| `HUBWARDEN_POD_REFILL` | 128KiB/s |\n",
		},
		{
			name: "prose",
			path: "a.md",
			content: "`HUBWARDEN_DNS_RATE`\npackets/s (default 20) after a burst of `HUBWARDEN_DNS_BURST` (default 10).\n\n" +
				"`HUBWARDEN_HEALTH_ADDR` (`:9281` by default) and `HUBWARDEN_DENY_LOG_WINDOW` (default 10 s).\n\n" +
				"the allowance (POD_REFILL 128 KiB/s), a dump every `DUMP_INTERVAL` (1 s), `CTMARK` (0x200000).\n\n" +
				"ctmark bit `0x100000` (HUBWARDEN_CTMARK default), (`HUBWARDEN_DNS_SERVERS`, default the `nameserver` lines)\n\n" +
				"WATCH=false, BACKSTOP_BUDGET = budget (default BACKSTOP_RATE 4 MiB/s), `SHAPE` (default FLOW_BUDGET 32MiB)\n",
			want: []string{
				`a.md:10: gives HUBWARDEN_FLOW_BUDGET the default "32MiB", but its default is 64MiB`,
				`a.md:2: gives HUBWARDEN_DNS_BURST the default "10", but its default is 100`,
				`a.md:4: gives HUBWARDEN_HEALTH_ADDR the default ":9281", but its default is :9280`,
				`a.md:6: gives HUBWARDEN_POD_REFILL the default "128 KiB/s", but its default is 256KiB/s`,
				`a.md:6: gives HUBWARDEN_CTMARK the default "0x200000", but its default is 0x100000`,
			},
		},
		{
			name: "settings and other values are not defaults",
			path: "a.md",
			content: "Tighter: `SLOW_RATE=256kbit` and `POD_REFILL=32KiB/s`; start with `HUBWARDEN_SLOW_RATE=fast`.\n\n" +
				"`HUBWARDEN_IPTABLES_BACKEND=nft|legacy` (default `auto`). `POD_BUDGET`/16, DNS_RATE × 512 bytes.\n\n" +
				"The default route (eth0) of `HUBWARDEN_INTERFACE`. Set `HUBWARDEN_USER` (alice).\n\n" +
				"```sh\nHUBWARDEN_POD_REFILL 1KiB/s (default 2)\n```\n",
		},
		{
			name: "names",
			path: "a.md",
			content: "`HUBWARDEN_FLOW_BUDGT` and `HUBWARDEN_SERVICE_HOST`, `HUBWARDEN_*`, `HUBWARDEN_...=...`,\n" +
				"HUBWARDEN_BIN, `HUBWARDEN_SHAPE*`, `HUBWARDEN_NOPE*`.\n\n" +
				"`HUBWARDEN_BACKSTOP` limits the rate.\n\n" +
				"`HUBWARDEN_BACKSTOP*` are accepted and ignored.\n",
			want: []string{
				"a.md:1: names HUBWARDEN_FLOW_BUDGT, which hubwarden does not read",
				"a.md:2: names HUBWARDEN_NOPE, which hubwarden does not read",
				"a.md:4: names HUBWARDEN_BACKSTOP, which has no effect any more, without saying so",
			},
		},
		{
			name: "values file",
			path: "v.yaml",
			content: `env:
  # Destinations, comma separated.
  # - name: HUBWARDEN_ALLOW
  #   value: tcp://pypi.org:443
  # Budgets (defaults shown).
  # - name: HUBWARDEN_FLOW_BUDGET
  #   value: 64MiB
  # - name: HUBWARDEN_POD_REFILL
  #   value: 128KiB/s
  - name: HUBWARDEN_POD_BUDGET
    value: 32MiB
  # A smaller budget than the default.
  - name: HUBWARDEN_FLOW_BUDGET
    value: 16MiB
  - name: HUBWARDEN_SLOW_RATE
    value: "2mbit" # the default
ports:
  - containerPort: 9280 # HUBWARDEN_HEALTH_ADDR, default :9281
    # 30 x 1s matches HUBWARDEN_STARTUP_TIMEOUT (60s).
`,
			want: []string{
				`v.yaml:9: gives HUBWARDEN_POD_REFILL the default "128KiB/s", but its default is 256KiB/s`,
				`v.yaml:16: gives HUBWARDEN_SLOW_RATE the default "2mbit", but its default is 1mbit`,
				`v.yaml:18: gives HUBWARDEN_HEALTH_ADDR the default ":9281", but its default is :9280`,
				`v.yaml:19: gives HUBWARDEN_STARTUP_TIMEOUT the default "60s", but its default is 30s`,
			},
		},
		{
			name:    "a record of a run",
			path:    "BENCHMARKS.md",
			content: "The run's figures: POD_REFILL 128KiB/s, `HUBWARDEN_FLOW_BUDGT`.\n",
			want:    []string{"BENCHMARKS.md:1: names HUBWARDEN_FLOW_BUDGT, which hubwarden does not read"},
		},
		{
			name:    "shell",
			path:    "s.sh",
			content: "rate=${HUBWARDEN_SLOW_RATE:-2mbit}\nb=${HUBWARDEN_FLOW_BUDGET:-64MiB}\n[ \"${HUBWARDEN_SETUP_E2E:-1}\" = 1 ]\n",
			want:    []string{`s.sh:1: gives HUBWARDEN_SLOW_RATE the default "2mbit", but its default is 1mbit`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newDocScan()
			s.file(tt.path, tt.content)
			var got []string
			for _, p := range s.problems {
				got = append(got, strings.TrimSpace(strings.Split(p, " (")[0]))
			}
			slices.Sort(got)
			want := slices.Clone(tt.want)
			slices.Sort(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s\nall:\n%s", diff, strings.Join(s.problems, "\n"))
			}
		})
	}
}
