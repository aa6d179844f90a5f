package deploytest

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
)

//go:embed render.py
var renderPy []byte

// Rendered is what render.py made: the versions it ran and one pod per
// server of a user whose name needs escaping.
type Rendered struct {
	Versions map[string]string `json:"versions"`
	Pods     []RenderedPod     `json:"pods"`
}

// RenderedPod is a user pod as KubeSpawner made it for one server, as the
// Kubernetes API would receive it.
type RenderedPod struct {
	Server              string          `json:"server"`
	UnescapedUsername   string          `json:"unescaped_username"`
	UnescapedServername string          `json:"unescaped_servername"`
	Pod                 json.RawMessage `json:"pod"`
}

// Chart and Release are what the chart's hub Secret carries besides the
// values (the hub config reads Chart.Name, Chart.Version and Release.Name).
var (
	Chart   = map[string]any{"Name": "jupyterhub", "Version": "4.4.0"}
	Release = map[string]any{"Name": "jhub", "Namespace": "jhub"}
)

// HubValues is the values file the chart's hub reads: the chart's defaults
// with the overlays merged over them as Helm merges them (mappings key by
// key, a null deletes, anything else replaces), the keys Helm drops because
// their value is null removed (so the chart's nameOverride: null reaches the
// hub as absent and the pods get app=jupyterhub, as z2jh's pods have), plus
// Chart and Release.
func HubValues(defaults map[string]any, overlays ...map[string]any) map[string]any {
	v := defaults
	for _, o := range overlays {
		v = coalesce(v, o)
	}
	v = dropNulls(v).(map[string]any)
	v["Chart"], v["Release"] = Chart, Release
	return v
}

func dropNulls(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			if e != nil {
				out[k] = dropNulls(e)
			}
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = dropNulls(e)
		}
		return out
	}
	return v
}

// Render runs KubeSpawner on the chart's hub configuration (chartDir holds
// hub-jupyterhub_config.py and hub-z2jh.py) with values, using python (the
// hub environment's), and returns the pods it made. Its error carries what
// the hub printed: a configuration the hub refuses is an error here.
func Render(python, chartDir string, values map[string]any) (*Rendered, error) {
	dir, err := os.MkdirTemp("", "deploytest-render-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "render.py")
	if err := os.WriteFile(script, renderPy, 0o644); err != nil {
		return nil, err
	}
	vj, err := json.Marshal(values)
	if err != nil {
		return nil, fmt.Errorf("encoding the values: %w", err)
	}
	in, out := filepath.Join(dir, "values.json"), filepath.Join(dir, "pods.json")
	if err := os.WriteFile(in, vj, 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(python, script, chartDir, in, out)
	// TMPDIR: render.py's scratch directory goes into ours, removed above.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir, "TMPDIR=" + dir, "LANG=C.UTF-8"}
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("KubeSpawner refused the values: %w\n%s", err, lastLines(string(msg), 12))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	var r Rendered
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decoding render.py's output: %w", err)
	}
	return &r, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// DecodePod decodes a serialized pod strictly into Kubernetes' own Go type:
// a field the type does not have, or one given twice, is an error, and field
// names are case-sensitive (sigs.k8s.io/json, what the API server's strict
// field validation uses).
func DecodePod(data []byte) (*corev1.Pod, error) {
	var pod corev1.Pod
	strict, err := kjson.UnmarshalStrict(data, &pod)
	if err != nil {
		return nil, fmt.Errorf("decoding the pod: %w", err)
	}
	if len(strict) > 0 {
		var msgs []string
		for _, e := range strict {
			msgs = append(msgs, e.Error())
		}
		return nil, fmt.Errorf("decoding the pod strictly: %s", strings.Join(msgs, "; "))
	}
	return &pod, nil
}

// braces finds strings of the pod that still hold a brace: KubeSpawner's
// str.format left it there (a doubled brace), and hubwarden needs none.
func braces(data []byte) []string {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return []string{err.Error()}
	}
	var out []string
	var walk func(v any, path string)
	walk = func(v any, path string) {
		switch t := v.(type) {
		case string:
			if strings.ContainsAny(t, "{}") {
				out = append(out, fmt.Sprintf("%s = %q", path, t))
			}
		case []any:
			for i, e := range t {
				walk(e, fmt.Sprintf("%s[%d]", path, i))
			}
		case map[string]any:
			keys := make([]string, 0, len(t))
			for k := range t {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walk(t[k], path+"."+k)
			}
		}
	}
	walk(v, "pod")
	return out
}

// CheckPod checks the hubwarden containers of a rendered pod: the native
// sidecar (an init container with restartPolicy Always and probes) or, with
// classic, `hubwarden init` as an init container and `hubwarden run` as an
// extra container; probes on the port hubwarden serves; the unescaped user
// and server names expanded (also in the guard's base URL); the security
// context the docs give; the state volume mounted; no brace left. It
// returns every problem found.
func CheckPod(rp RenderedPod, pod *corev1.Pod, hw *Hubwarden, classic bool) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for _, b := range braces(rp.Pod) {
		add("a brace reached the pod: %s", b)
	}
	_, portStr, _ := strings.Cut(hw.Defaults["HUBWARDEN_HEALTH_ADDR"], ":")
	port, err := strconv.Atoi(portStr)
	if err != nil {
		add("hubwarden --help gives no port in HUBWARDEN_HEALTH_ADDR's default %q", hw.Defaults["HUBWARDEN_HEALTH_ADDR"])
	}
	state := hw.Defaults["HUBWARDEN_STATE_DIR"]

	isHubwarden := func(c corev1.Container) bool { return strings.Contains(c.Image, "hubwarden") }
	var inits, extras []corev1.Container
	for _, c := range pod.Spec.InitContainers {
		if isHubwarden(c) {
			inits = append(inits, c)
		}
	}
	for _, c := range pod.Spec.Containers {
		if isHubwarden(c) {
			extras = append(extras, c)
		}
	}
	var run *corev1.Container
	switch {
	case !classic:
		if len(inits) != 1 || len(extras) != 0 {
			add("want one hubwarden init container and no hubwarden container, have %d and %d", len(inits), len(extras))
			return problems
		}
		run = &inits[0]
		if run.RestartPolicy == nil || *run.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			add("init container %s: restartPolicy %v, want Always (a native sidecar)", run.Name, run.RestartPolicy)
		}
		if pod.Spec.InitContainers[0].Name != run.Name {
			add("init container %s is not the first: the rules must be in before any other container runs", run.Name)
		}
		probe(add, run, "startupProbe", run.StartupProbe, "/readyz", port)
		probe(add, run, "livenessProbe", run.LivenessProbe, "/healthz", port)
		probe(add, run, "readinessProbe", run.ReadinessProbe, "/readyz", port)
	default:
		if len(inits) != 1 || len(extras) != 1 {
			add("want hubwarden as one init container and one container, have %d and %d", len(inits), len(extras))
			return problems
		}
		init := &inits[0]
		run = &extras[0]
		if init.RestartPolicy != nil {
			add("init container %s: restartPolicy %v, want none (init runs to completion)", init.Name, *init.RestartPolicy)
		}
		if !slices.Equal(init.Args, []string{"init"}) {
			add("init container %s: args %q, want [init]", init.Name, init.Args)
		}
		if init.StartupProbe != nil || init.LivenessProbe != nil || init.ReadinessProbe != nil {
			add("init container %s has probes: it serves nothing", init.Name)
		}
		if pod.Spec.InitContainers[0].Name != init.Name {
			add("init container %s is not the first", init.Name)
		}
		common(add, init, rp, state)
		probe(add, run, "readinessProbe", run.ReadinessProbe, "/readyz", port)
		probe(add, run, "livenessProbe", run.LivenessProbe, "/healthz", port)
	}
	if !slices.Equal(run.Args, []string{"run"}) {
		add("container %s: args %q, want [run]", run.Name, run.Args)
	}
	served := false
	for _, p := range run.Ports {
		if int(p.ContainerPort) == port {
			served = true
		}
	}
	if !served {
		add("container %s declares no containerPort %d (HUBWARDEN_HEALTH_ADDR)", run.Name, port)
	}
	common(add, run, rp, state)
	// The state directory is a pod volume, an emptyDir.
	found := false
	for _, v := range pod.Spec.Volumes {
		for _, m := range run.VolumeMounts {
			if m.Name == v.Name && m.MountPath == state {
				found = true
				if v.EmptyDir == nil {
					add("volume %s at %s is not an emptyDir", v.Name, state)
				}
			}
		}
	}
	if !found {
		add("container %s has no pod volume mounted at %s (HUBWARDEN_STATE_DIR)", run.Name, state)
	}
	// Only hubwarden gets NET_ADMIN.
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if isHubwarden(c) || c.SecurityContext == nil || c.SecurityContext.Capabilities == nil {
			continue
		}
		if slices.Contains(c.SecurityContext.Capabilities.Add, "NET_ADMIN") {
			add("container %s besides hubwarden has NET_ADMIN", c.Name)
		}
	}
	return problems
}

func probe(add func(string, ...any), c *corev1.Container, name string, p *corev1.Probe, path string, port int) {
	switch {
	case p == nil:
		add("container %s: no %s", c.Name, name)
	case p.HTTPGet == nil:
		add("container %s: %s is not an httpGet", c.Name, name)
	default:
		if p.HTTPGet.Path != path {
			add("container %s: %s path %s, want %s", c.Name, name, p.HTTPGet.Path, path)
		}
		if got := p.HTTPGet.Port.IntValue(); got != port {
			add("container %s: %s on port %s, but hubwarden serves on %d (HUBWARDEN_HEALTH_ADDR)", c.Name, name, p.HTTPGet.Port.String(), port)
		}
	}
}

// common checks what both hubwarden containers need: the names, the
// security context of docs/deploy-z2jh.md ("Why root": root with exactly
// NET_ADMIN and NET_RAW, nothing privileged, a read-only root filesystem)
// and the state volume.
func common(add func(string, ...any), c *corev1.Container, rp RenderedPod, state string) {
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["HUBWARDEN_USER"] != rp.UnescapedUsername {
		add("container %s: HUBWARDEN_USER %q, want the unescaped user name %q", c.Name, env["HUBWARDEN_USER"], rp.UnescapedUsername)
	}
	if env["HUBWARDEN_SERVER"] != rp.UnescapedServername {
		add("container %s: HUBWARDEN_SERVER %q, want the unescaped server name %q", c.Name, env["HUBWARDEN_SERVER"], rp.UnescapedServername)
	}
	// The guard's base URL, as JupyterHub builds it from the unescaped
	// names (the guard escapes it itself).
	if got, ok := env["HUBWARDEN_SERVER_BASE_URL"]; ok {
		if want := "/user/" + rp.UnescapedUsername + "/" + rp.UnescapedServername; got != want {
			add("container %s: HUBWARDEN_SERVER_BASE_URL %q, want %q", c.Name, got, want)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		add("container %s: no securityContext with capabilities", c.Name)
		return
	}
	f := func(b *bool) string {
		if b == nil {
			return "unset"
		}
		return strconv.FormatBool(*b)
	}
	if f(sc.Privileged) != "false" || f(sc.AllowPrivilegeEscalation) != "false" || f(sc.ReadOnlyRootFilesystem) != "true" || f(sc.RunAsNonRoot) != "false" {
		add("container %s: privileged %s, allowPrivilegeEscalation %s, readOnlyRootFilesystem %s, runAsNonRoot %s; want false, false, true, false",
			c.Name, f(sc.Privileged), f(sc.AllowPrivilegeEscalation), f(sc.ReadOnlyRootFilesystem), f(sc.RunAsNonRoot))
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		add("container %s: runAsUser %v, want 0", c.Name, sc.RunAsUser)
	}
	var drop, addCaps []string
	for _, x := range sc.Capabilities.Drop {
		drop = append(drop, string(x))
	}
	for _, x := range sc.Capabilities.Add {
		addCaps = append(addCaps, string(x))
	}
	sort.Strings(addCaps)
	if !slices.Equal(drop, []string{"ALL"}) || !slices.Equal(addCaps, []string{"NET_ADMIN", "NET_RAW"}) {
		add("container %s: capabilities drop %v add %v, want drop [ALL] add [NET_ADMIN NET_RAW]", c.Name, drop, addCaps)
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == state {
			mounted = true
		}
	}
	if !mounted {
		add("container %s: nothing mounted at the state directory %s", c.Name, state)
	}
}
