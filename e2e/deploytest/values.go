package deploytest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"sigs.k8s.io/yaml"
)

// Hubwarden is what the checker knows about the hubwarden binary under test.
type Hubwarden struct {
	// Path is the binary, built from the repository root.
	Path string
	// Defaults maps every variable hubwarden accepts to its default, as
	// printed by `hubwarden --help` ("" for none).
	Defaults map[string]string
	// ImageEnv is the environment the image sets (ENV lines of its runtime
	// stage), e.g. XTABLES_LOCKFILE.
	ImageEnv map[string]string
}

// ReadImageEnv returns the ENV settings of a Dockerfile's last stage, in the
// "ENV KEY=VALUE [KEY=VALUE...]" form with backslash continuations.
func ReadImageEnv(dockerfile string) (map[string]string, error) {
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		return nil, err
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	env := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			env = map[string]string{}
		case "ENV":
			for _, kv := range f[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return nil, fmt.Errorf("reading %s: ENV %q is not KEY=VALUE", dockerfile, kv)
				}
				env[k] = v
			}
		}
	}
	return env, nil
}

// LoadHubwarden reads the accepted variables from `bin --help`: the lines of
// its VARIABLE/DEFAULT/MEANING table.
func LoadHubwarden(bin string) (*Hubwarden, error) {
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("running %s --help: %w\n%s", bin, err, out)
	}
	h := &Hubwarden{Path: bin, Defaults: map[string]string{}}
	inTable := false
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VARIABLE" && f[1] == "DEFAULT" {
			inTable = true
			continue
		}
		if !inTable || len(f) < 2 || !strings.HasPrefix(f[0], "HUBWARDEN_") {
			continue
		}
		def := f[1]
		if def == "-" {
			def = ""
		}
		h.Defaults[f[0]] = def
	}
	if len(h.Defaults) == 0 {
		return nil, fmt.Errorf("reading %s --help: no HUBWARDEN_ variables in its table", bin)
	}
	return h, nil
}

// Schema is the chart's values schema with the chart's default values.
type Schema struct {
	schema   *jsonschema.Schema
	defaults map[string]any
}

// LoadSchema compiles the chart's values.schema.yaml and reads its values.yaml.
func LoadSchema(schemaPath, defaultsPath string) (*Schema, error) {
	doc, err := readYAMLAsJSONValue(schemaPath)
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("values.schema.json", doc); err != nil {
		return nil, fmt.Errorf("adding schema %s: %w", schemaPath, err)
	}
	sch, err := c.Compile("values.schema.json")
	if err != nil {
		return nil, fmt.Errorf("compiling schema %s: %w", schemaPath, err)
	}
	def, err := readYAMLAsJSONValue(defaultsPath)
	if err != nil {
		return nil, err
	}
	m, ok := def.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("reading %s: not a mapping", defaultsPath)
	}
	return &Schema{schema: sch, defaults: m}, nil
}

// readYAMLAsJSONValue reads a YAML file into the value types the schema
// validator expects (json.Number for numbers).
func readYAMLAsJSONValue(path string) (any, error) {
	y, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	return v, nil
}

// coalesce merges user values over chart defaults as Helm does: mappings
// merge key by key, a null deletes the key, anything else replaces.
func coalesce(defaults, user map[string]any) map[string]any {
	out := make(map[string]any, len(defaults))
	for k, v := range defaults {
		out[k] = v
	}
	for k, uv := range user {
		if uv == nil {
			delete(out, k)
			continue
		}
		um, uok := uv.(map[string]any)
		dm, dok := out[k].(map[string]any)
		if uok && dok {
			out[k] = coalesce(dm, um)
			continue
		}
		out[k] = uv
	}
	return out
}

// Check reads one values overlay and returns every problem found, each a
// sentence naming the place; none means the file is good. Only an unreadable
// file or a failing tool is an error.
func Check(path string, s *Schema, hw *Hubwarden) ([]string, error) {
	v, err := readYAMLAsJSONValue(path)
	if err != nil {
		return nil, err
	}
	user, ok := v.(map[string]any)
	if !ok {
		return []string{"the file is not a YAML mapping"}, nil
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if err := s.schema.Validate(coalesce(s.defaults, user)); err != nil {
		var ve *jsonschema.ValidationError
		if !errors.As(err, &ve) {
			return nil, fmt.Errorf("validating %s: %w", path, err)
		}
		add("z2jh values schema: %v", ve)
	}

	single, _ := user["singleuser"].(map[string]any)
	if single == nil {
		add("no singleuser section")
		return problems, nil
	}

	// KubeSpawner expands these with str.format; nothing may need a literal
	// brace, so no brace may survive the expansion either.
	expanded := map[string]any{}
	for _, key := range []string{"initContainers", "extraContainers"} {
		expanded[key] = expandAll(single[key], "singleuser."+key, add)
	}
	storage, _ := single["storage"].(map[string]any)
	volumes := map[string]bool{}
	if storage != nil {
		for _, key := range []string{"extraVolumes", "extraVolumeMounts"} {
			expandAll(storage[key], "singleuser.storage."+key, add)
		}
		switch ev := storage["extraVolumes"].(type) {
		case map[string]any:
			for _, vol := range ev {
				if m, ok := vol.(map[string]any); ok {
					name, _ := m["name"].(string)
					volumes[name] = true
				}
			}
		case []any:
			for _, vol := range ev {
				if m, ok := vol.(map[string]any); ok {
					name, _ := m["name"].(string)
					volumes[name] = true
				}
			}
		}
	}
	if cm, _ := single["cloudMetadata"].(map[string]any); cm == nil || cm["blockWithIptables"] != false {
		add("singleuser.cloudMetadata.blockWithIptables must be false: hubwarden blocks metadata itself, and z2jh's container needs privileged: true")
	}

	var sidecars []container
	for _, key := range []string{"initContainers", "extraContainers"} {
		list, _ := expanded[key].([]any)
		for i, c := range list {
			m, ok := c.(map[string]any)
			if !ok {
				add("singleuser.%s[%d] is not a mapping", key, i)
				continue
			}
			ct := container{where: fmt.Sprintf("singleuser.%s[%d]", key, i), init: key == "initContainers", spec: m}
			if ct.isHubwarden() {
				sidecars = append(sidecars, ct)
			}
		}
	}
	if len(sidecars) == 0 {
		add("no hubwarden container (one whose args start with init or run)")
	}
	long := 0
	for _, ct := range sidecars {
		if ct.command() == "run" {
			long++
		}
		problems = append(problems, ct.check(hw, volumes)...)
	}
	if long != 1 {
		add("want exactly one long-running hubwarden container (args [run]), have %d", long)
	}
	return problems, nil
}

// expandAll applies PyFormat to every string in v, reporting failures and
// braces left after expansion, and returns v with the strings expanded.
func expandAll(v any, where string, add func(string, ...any)) any {
	switch t := v.(type) {
	case string:
		out, err := PyFormat(t, Placeholders)
		if err != nil {
			add("%s: %v", where, err)
			return t
		}
		if strings.ContainsAny(out, "{}") {
			add("%s: %q expands to %q: a literal brace reaches the container (hubwarden needs none)", where, t, out)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = expandAll(e, fmt.Sprintf("%s[%d]", where, i), add)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(t))
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out[k] = expandAll(t[k], where+"."+k, add)
		}
		return out
	default:
		return v
	}
}

type container struct {
	where string
	init  bool
	spec  map[string]any
}

func (c container) strings(key string) []string {
	var out []string
	list, _ := c.spec[key].([]any)
	for _, v := range list {
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

// command is hubwarden's subcommand: the first argument.
func (c container) command() string {
	if args := c.strings("args"); len(args) > 0 {
		return args[0]
	}
	return ""
}

func (c container) isHubwarden() bool {
	img, _ := c.spec["image"].(string)
	cmd := c.command()
	return strings.Contains(img, "hubwarden") || cmd == "init" || cmd == "run"
}

func (c container) check(hw *Hubwarden, volumes map[string]bool) []string {
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, c.where+": "+fmt.Sprintf(format, args...))
	}
	cmd := c.command()
	if cmd != "init" && cmd != "run" {
		add("args must start with init or run, have %q", c.strings("args"))
	}
	native := c.init && c.spec["restartPolicy"] == "Always"
	switch {
	case cmd == "run" && c.init && !native:
		add("hubwarden run as an init container needs restartPolicy: Always (a native sidecar)")
	case cmd == "init" && (!c.init || native):
		add("hubwarden init belongs in initContainers without restartPolicy")
	}

	env := map[string]string{}
	list, _ := c.spec["env"].([]any)
	for i, e := range list {
		m, _ := e.(map[string]any)
		name, _ := m["name"].(string)
		val, isString := m["value"].(string)
		if _, has := m["value"]; has && !isString {
			add("env[%d] %s: value must be a string, have %v", i, name, m["value"])
		}
		if _, dup := env[name]; dup {
			add("env %s set twice", name)
		}
		env[name] = val
		if strings.HasPrefix(name, "HUBWARDEN_") {
			if _, known := hw.Defaults[name]; !known {
				add("env %s: unknown variable: hubwarden does not read it (see hubwarden --help)", name)
			}
		}
	}
	problems = append(problems, prefix(c.where+": ", hw.checkConfig(env))...)

	// Probes and port must match the address hubwarden serves.
	addr := hw.Defaults["HUBWARDEN_HEALTH_ADDR"]
	if v, ok := env["HUBWARDEN_HEALTH_ADDR"]; ok {
		addr = v
	}
	_, portStr, _ := strings.Cut(addr, ":")
	port, err := strconv.Atoi(portStr)
	if err != nil {
		add("HUBWARDEN_HEALTH_ADDR %q has no port", addr)
	}
	probe := func(key, path string, required bool) {
		p, _ := c.spec[key].(map[string]any)
		if p == nil {
			if required {
				add("%s missing (want httpGet %s on port %d)", key, path, port)
			}
			return
		}
		hg, _ := p["httpGet"].(map[string]any)
		if hg == nil {
			add("%s: want httpGet %s on port %d", key, path, port)
			return
		}
		if hg["path"] != path {
			add("%s: path %v, want %s", key, hg["path"], path)
		}
		if fmt.Sprint(hg["port"]) != strconv.Itoa(port) {
			add("%s: port %v, but hubwarden serves on %q (HUBWARDEN_HEALTH_ADDR)", key, hg["port"], addr)
		}
	}
	switch {
	case native:
		probe("startupProbe", "/readyz", true)
		probe("livenessProbe", "/healthz", true)
		probe("readinessProbe", "/readyz", false)
	case cmd == "run":
		probe("readinessProbe", "/readyz", true)
		probe("livenessProbe", "/healthz", true)
		probe("startupProbe", "/readyz", false)
	default:
		for _, k := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
			if c.spec[k] != nil {
				add("%s on hubwarden init: init containers run to completion and serve nothing", k)
			}
		}
	}
	if cmd == "run" {
		ports, _ := c.spec["ports"].([]any)
		found := false
		for _, p := range ports {
			m, _ := p.(map[string]any)
			if fmt.Sprint(m["containerPort"]) == strconv.Itoa(port) {
				found = true
			}
		}
		if !found {
			add("no containerPort %d (HUBWARDEN_HEALTH_ADDR %q)", port, addr)
		}
	}

	// Security context: exactly NET_ADMIN and NET_RAW, nothing privileged.
	sc, _ := c.spec["securityContext"].(map[string]any)
	if sc == nil {
		add("no securityContext")
	} else {
		if sc["privileged"] != false {
			add("securityContext.privileged must be false")
		}
		if sc["allowPrivilegeEscalation"] != false {
			add("securityContext.allowPrivilegeEscalation must be false")
		}
		if sc["readOnlyRootFilesystem"] != true {
			add("securityContext.readOnlyRootFilesystem must be true")
		}
		caps, _ := sc["capabilities"].(map[string]any)
		sub := container{spec: caps}
		if got := strings.Join(sub.strings("drop"), ","); got != "ALL" {
			add("securityContext.capabilities.drop is [%s], want [ALL]", got)
		}
		got := sub.strings("add")
		sort.Strings(got)
		if strings.Join(got, ",") != "NET_ADMIN,NET_RAW" {
			add("securityContext.capabilities.add is %v, want [NET_ADMIN NET_RAW]", got)
		}
	}

	// The state directory must be a pod volume (an emptyDir), not the
	// read-only root filesystem.
	state := hw.Defaults["HUBWARDEN_STATE_DIR"]
	if v, ok := env["HUBWARDEN_STATE_DIR"]; ok {
		state = v
	}
	mounted := false
	mounts, _ := c.spec["volumeMounts"].([]any)
	for _, mnt := range mounts {
		m, _ := mnt.(map[string]any)
		name, _ := m["name"].(string)
		if !volumes[name] {
			add("volumeMount %q: no such volume in singleuser.storage.extraVolumes", name)
		}
		if m["mountPath"] == state {
			mounted = true
		}
	}
	if !mounted {
		add("no volume mounted at the state directory %s (HUBWARDEN_STATE_DIR)", state)
	}
	// iptables-legacy locks XTABLES_LOCKFILE; the root filesystem is read-only.
	if lock, ok := hw.ImageEnv["XTABLES_LOCKFILE"]; ok {
		dir := filepath.Dir(lock)
		found := false
		for _, mnt := range mounts {
			m, _ := mnt.(map[string]any)
			if m["mountPath"] == dir {
				found = true
			}
		}
		if !found {
			add("the image's XTABLES_LOCKFILE %s is not on a mounted volume (the root filesystem is read-only)", lock)
		}
	}
	return problems
}

// checkConfig runs hubwarden's own configuration loader on env through
// `hubwarden plan --offline`, which loads the configuration and prints the plan without
// touching the kernel. Until plan exists, unknown names are caught from
// --help alone (above).
func (hw *Hubwarden) checkConfig(env map[string]string) []string {
	// --offline: the values name cluster hosts ("hub"); resolving them here
	// would send DNS queries to this machine's resolver.
	cmd := exec.Command(hw.Path, "plan", "--offline")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	text := string(out)
	if strings.Contains(text, `unknown command "plan"`) {
		return nil
	}
	var problems []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "HUBWARDEN_") {
			problems = append(problems, "hubwarden plan: "+line)
		}
	}
	if len(problems) == 0 {
		problems = append(problems, fmt.Sprintf("hubwarden plan failed (%v): %s", err, strings.TrimSpace(text)))
	}
	return problems
}

// PlanAvailable reports whether the binary has the plan command, so tests can
// say which check ran.
func (hw *Hubwarden) PlanAvailable() bool {
	out, _ := exec.Command(hw.Path, "plan", "--offline").CombinedOutput()
	return !strings.Contains(string(out), `unknown command "plan"`)
}

func prefix(p string, lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = p + l
	}
	return out
}

// RepoRoot is the hubwarden repository root, two levels above this module.
func RepoRoot() (string, error) {
	return filepath.Abs(filepath.Join("..", ".."))
}
