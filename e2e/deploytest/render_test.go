package deploytest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hubPython is the hub environment's python (scripts/python-env.sh:
// JupyterHub 5.5.0, KubeSpawner 7.0.0, kubernetes-asyncio 36.1.0, the z2jh
// 4.4 hub image's pins). Without it the render tests skip, unless
// HUBWARDEN_REQUIRE_VENV=1 (make deploy-check sets it), which makes them fail.
func hubPython(t *testing.T) string {
	t.Helper()
	root := os.Getenv("HUBWARDEN_VENV_ROOT")
	if root == "" {
		root = "/opt/hubwarden/venv"
	}
	py := filepath.Join(root, "hub", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		if os.Getenv("HUBWARDEN_REQUIRE_VENV") == "1" {
			t.Fatalf("no hub environment (%v): run scripts/setup.sh", err)
		}
		t.Skipf("no hub environment (%v): run scripts/setup.sh", err)
	}
	return py
}

func readValues(t *testing.T, path string) map[string]any {
	t.Helper()
	v, err := readYAMLAsJSONValue(path)
	if err != nil {
		t.Fatal(err)
	}
	// The schema validator's number type does not survive json.Marshal as
	// a number everywhere; go through encoding/json for plain values.
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// renderCheck renders values with the chart's own hub configuration and
// KubeSpawner, then decodes every pod strictly into k8s.io/api/core/v1,
// validates it as the API server would, and checks hubwarden's containers.
// It returns every problem found; KubeSpawner refusing the values is one.
func renderCheck(t *testing.T, py string, hw *Hubwarden, values map[string]any, classic bool) []string {
	t.Helper()
	r, err := Render(py, "testdata", values)
	if err != nil {
		return []string{err.Error()}
	}
	if len(r.Pods) != 2 {
		return []string{fmt.Sprintf("render.py made %d pods, want 2", len(r.Pods))}
	}
	var problems []string
	for _, rp := range r.Pods {
		where := "server " + quoted(rp.Server) + ": "
		pod, err := DecodePod(rp.Pod)
		if err != nil {
			problems = append(problems, where+err.Error())
			continue
		}
		if err := ValidatePod(pod, "jhub"); err != nil {
			problems = append(problems, where+err.Error())
		}
		for _, p := range CheckPod(rp, pod, hw, classic) {
			problems = append(problems, where+p)
		}
	}
	return problems
}

func quoted(s string) string { b, _ := json.Marshal(s); return string(b) }

// TestRenderValuesFiles renders the pods of each z2jh-values file the way a
// z2jh 4.4 hub does (the chart's jupyterhub_config.py and z2jh.py reading
// the chart's defaults merged with the file; KubeSpawner 7.0.0's
// get_pod_manifest, i.e. make_pod) for a user whose name needs escaping, on
// the default and on a named server, and checks the pods.
func TestRenderValuesFiles(t *testing.T) {
	py := hubPython(t)
	_, hw, root := setup(t)
	defaults := readValues(t, defaultsFile)
	files, err := filepath.Glob(filepath.Join(root, "z2jh-values", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("found %d values files, want at least hubwarden.yaml and hubwarden-classic.yaml", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			classic := strings.Contains(filepath.Base(f), "classic")
			problems := renderCheck(t, py, hw, HubValues(defaults, readValues(t, f)), classic)
			for _, p := range problems {
				t.Error(p)
			}
			if len(problems) == 0 {
				r, err := Render(py, "testdata", HubValues(defaults, readValues(t, f)))
				if err == nil {
					t.Logf("rendered by %v: the pods decode strictly into k8s.io/api/core/v1, pass Kubernetes' create validation and hubwarden's checks", r.Versions)
				}
			}
		})
	}
}

// mutate returns a deep copy of v changed by f.
func mutate(t *testing.T, v map[string]any, f func(m map[string]any)) map[string]any {
	t.Helper()
	b, _ := json.Marshal(v)
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	f(c)
	return c
}

func spec(m map[string]any, list string, i int) map[string]any {
	return m["singleuser"].(map[string]any)[list].([]any)[i].(map[string]any)
}

func setEnv(c map[string]any, name, value string) {
	for _, e := range c["env"].([]any) {
		if em := e.(map[string]any); em["name"] == name {
			em["value"] = value
		}
	}
}

// TestRenderRejects proves that the render test catches each mistake: each
// case changes one thing in the real values file, and the pods it gives
// must be refused, by KubeSpawner, by the strict decoding, by Kubernetes'
// validation or by hubwarden's checks, with the message given.
func TestRenderRejects(t *testing.T) {
	py := hubPython(t)
	_, hw, root := setup(t)
	defaults := readValues(t, defaultsFile)
	native := readValues(t, filepath.Join(root, "z2jh-values", "hubwarden.yaml"))
	classic := readValues(t, filepath.Join(root, "z2jh-values", "hubwarden-classic.yaml"))
	tests := []struct {
		name    string
		base    map[string]any
		classic bool
		change  func(m map[string]any)
		want    []string // each must be in some problem
	}{
		{"restartPolicy removed", native, false, func(m map[string]any) { delete(spec(m, "initContainers", 0), "restartPolicy") },
			// Kubernetes refuses probes on a plain init container, and
			// hubwarden's check wants a native sidecar.
			[]string{"may not be set for init containers without restartPolicy=Always", "want Always (a native sidecar)"}},
		{"unknown field in a container (restartPolicy misspelt)", native, false, func(m map[string]any) {
			c := spec(m, "initContainers", 0)
			c["restartPolice"] = c["restartPolicy"]
			delete(c, "restartPolicy")
		}, []string{"KubeSpawner refused the values", "restartPolice"}},
		{"unknown field nested in a container (capability for capabilities)", native, false, func(m map[string]any) {
			sc := spec(m, "initContainers", 0)["securityContext"].(map[string]any)
			sc["capability"] = sc["capabilities"]
			delete(sc, "capabilities")
		}, []string{`unknown field "spec.initContainers[0].securityContext.capability"`}},
		{"stray opening brace", native, false, func(m map[string]any) { setEnv(spec(m, "initContainers", 0), "HUBWARDEN_USER", "{unescaped_username") },
			[]string{"KubeSpawner refused the values", "expected '}' before end of string"}},
		{"stray closing brace", native, false, func(m map[string]any) { setEnv(spec(m, "initContainers", 0), "HUBWARDEN_SERVER", "servername}") },
			[]string{"KubeSpawner refused the values", "Single '}' encountered in format string"}},
		{"doubled brace left in the pod", native, false, func(m map[string]any) { setEnv(spec(m, "initContainers", 0), "HUBWARDEN_SERVER", "{{servername}}") },
			[]string{`a brace reached the pod: pod.spec.initContainers[0].env[1].value = "{servername}"`}},
		{"probe on the wrong port", native, false, func(m map[string]any) {
			spec(m, "initContainers", 0)["startupProbe"].(map[string]any)["httpGet"].(map[string]any)["port"] = 9281
		}, []string{"startupProbe on port 9281, but hubwarden serves on 9280"}},
		{"classic: probe on the wrong port", classic, true, func(m map[string]any) {
			spec(m, "extraContainers", 0)["readinessProbe"].(map[string]any)["httpGet"].(map[string]any)["port"] = 9281
		}, []string{"readinessProbe on port 9281, but hubwarden serves on 9280"}},
		{"classic: init made a native sidecar", classic, true, func(m map[string]any) { spec(m, "initContainers", 0)["restartPolicy"] = "Always" },
			[]string{"want none (init runs to completion)"}},
		{"unescaped name replaced by the slug", native, false, func(m map[string]any) { setEnv(spec(m, "initContainers", 0), "HUBWARDEN_USER", "{username}") },
			[]string{`HUBWARDEN_USER "alice-smith-example-org---0d1cf0a9", want the unescaped user name "alice.smith@example.org"`}},
		{"the guard's base URL from the slugs", native, false, func(m map[string]any) {
			setEnv(spec(m, "initContainers", 0), "HUBWARDEN_SERVER_BASE_URL", "/user/{username}/{servername}")
		}, []string{`HUBWARDEN_SERVER_BASE_URL "/user/alice-smith-example-org---0d1cf0a9/data-prep---`}},
		{"state volume not mounted", native, false, func(m map[string]any) { delete(spec(m, "initContainers", 0), "volumeMounts") },
			[]string{"no pod volume mounted at /run/hubwarden"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := HubValues(defaults, mutate(t, tt.base, tt.change))
			problems := renderCheck(t, py, hw, values, tt.classic)
			all := strings.Join(problems, "\n")
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("want a problem containing %q; got:\n%s", w, all)
				}
			}
			t.Logf("refused as expected:\n%s", all)
		})
	}
	// A placeholder written without quotes is a YAML flow mapping: the
	// value reaches KubeSpawner as a mapping, not a string.
	text, err := os.ReadFile(filepath.Join(root, "z2jh-values", "hubwarden.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	unquoted := strings.Replace(string(text), `value: "{unescaped_username}"`, `value: {unescaped_username}`, 1)
	if unquoted == string(text) {
		t.Fatal(`hubwarden.yaml has no value: "{unescaped_username}" to unquote`)
	}
	path := filepath.Join(t.TempDir(), "unquoted.yaml")
	if err := os.WriteFile(path, []byte(unquoted), 0o644); err != nil {
		t.Fatal(err)
	}
	problems := strings.Join(renderCheck(t, py, hw, HubValues(defaults, readValues(t, path)), false), "\n")
	if want := "cannot unmarshal object into Go struct field EnvVar.spec.initContainers.env.value of type string"; !strings.Contains(problems, want) {
		t.Errorf("unquoted placeholder: want a problem containing %q; got:\n%s", want, problems)
	}
	t.Logf("unquoted placeholder refused as expected:\n%s", problems)

	// The control: the same files unchanged give no problem.
	for name, v := range map[string]map[string]any{"hubwarden.yaml": native, "hubwarden-classic.yaml": classic} {
		if p := renderCheck(t, py, hw, HubValues(defaults, v), name == "hubwarden-classic.yaml"); len(p) > 0 {
			t.Errorf("%s unchanged: %q", name, p)
		}
	}
}
