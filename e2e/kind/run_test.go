package kind

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func runSh(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"./run.sh"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running run.sh: %v", err)
	}
	return out.String(), code
}

func TestRunShSyntax(t *testing.T) {
	if out, err := exec.Command("bash", "-n", "run.sh").CombinedOutput(); err != nil {
		t.Fatalf("bash -n run.sh: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Skip("shellcheck not installed")
	}
	if out, err := exec.Command("shellcheck", "run.sh").CombinedOutput(); err != nil {
		t.Fatalf("shellcheck run.sh: %v\n%s", err, out)
	}
}

func TestRunShArguments(t *testing.T) {
	tests := []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"--help"}, 0, "run.sh [--dry-run]"},
		{[]string{"-h"}, 0, "real-cluster check"},
		{[]string{"--bogus"}, 2, "unknown argument: --bogus"},
		{[]string{"--name"}, 1, "--name needs a value"},
		{[]string{"--dry-run", "--chart-version", "3.3.0"}, 0, "tested with z2jh 4.4.x"},
	}
	for _, tt := range tests {
		out, code := runSh(t, tt.args...)
		if code != tt.wantCode || !strings.Contains(out, tt.want) {
			t.Errorf("run.sh %v: exit %d, output:\n%s\nwant exit %d and %q", tt.args, code, out, tt.wantCode, tt.want)
		}
	}
}

// TestRunShDryRun checks the plan: every step, in order, and logs exported
// before the cluster is deleted.
func TestRunShDryRun(t *testing.T) {
	out, code := runSh(t, "--dry-run", "--name", "hw-test")
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s", code, out)
	}
	steps := []string{
		"+ kind create cluster --name hw-test",
		"+ docker build -t hubwarden:e2e -f ",
		"+ kind load docker-image hubwarden:e2e --name hw-test",
		"+ helm upgrade --install jhub jupyterhub/jupyterhub --version 4.4.0",
		"/hub/api/users/tester/server",
		`initContainers[?(@.name=="hubwarden")].restartPolicy`,
		"/tmp/hubwarden verify",
		"+ kubectl apply -f ",
		"hubwarden-tester",
		"+ kind export logs ",
		"+ kind delete cluster --name hw-test",
	}
	at := 0
	for _, s := range steps {
		i := strings.Index(out[at:], s)
		if i < 0 {
			t.Fatalf("step %q missing or out of order in:\n%s", s, out)
		}
		at += i + len(s)
	}
	if _, err := os.Stat("artifacts"); err == nil {
		t.Errorf("a dry run created the artifacts dir")
	}
	if out, _ := runSh(t, "--dry-run", "--keep"); strings.Contains(out, "+ kind delete cluster") {
		t.Errorf("--keep still deletes the cluster:\n%s", out)
	}
}

// yamlDocs parses a YAML stream into JSON-able documents with python3-yaml.
func yamlDocs(t *testing.T, y string) []map[string]any {
	t.Helper()
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import yaml").Run(); err != nil {
		t.Skip("python3-yaml not installed")
	}
	cmd := exec.Command(py, "-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))")
	cmd.Stdin = strings.NewReader(y)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("parsing YAML: %v\n%s\n---\n%s", err, out, y)
	}
	var docs []map[string]any
	if err := json.Unmarshal(out, &docs); err != nil {
		t.Fatal(err)
	}
	return docs
}

func TestRenderedTester(t *testing.T) {
	out, code := runSh(t, "--render-tester")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	docs := yamlDocs(t, out)
	var got []string
	for _, d := range docs {
		md := d["metadata"].(map[string]any)
		got = append(got, d["kind"].(string)+"/"+md["name"].(string)+"@"+md["namespace"].(string))
	}
	want := []string{"Pod/forbidden-web@jhub", "Service/forbidden-web@jhub", "Pod/hubwarden-tester@jhub"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tester manifests (-want +got):\n%s", diff)
	}
	script := docs[2]["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)["command"].([]any)[2].(string)
	for _, s := range []string{"$TOKEN", "/user/$TEST_USER/files/big.bin", "http://forbidden-web:8080/"} {
		if !strings.Contains(script, s) {
			t.Errorf("tester script lacks %q:\n%s", s, script)
		}
	}
	if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("tester script is not valid sh: %v %s\n%s", err, out, script)
	}
}

func TestRenderedValues(t *testing.T) {
	out, code := runSh(t, "--render-values")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	docs := yamlDocs(t, out)
	if len(docs) != 1 {
		t.Fatalf("want one document, got %d", len(docs))
	}
	hub := docs[0]["hub"].(map[string]any)
	tok := hub["services"].(map[string]any)["e2e"].(map[string]any)["api_token"].(string)
	if len(tok) != 32 {
		t.Errorf("service token %q: want 32 hex characters", tok)
	}
	users := hub["config"].(map[string]any)["Authenticator"].(map[string]any)["allowed_users"]
	if diff := cmp.Diff([]any{"tester"}, users); diff != "" {
		t.Errorf("allowed users (-want +got):\n%s", diff)
	}
	// The values must use only keys the chart's schema knows (z2jh 4.4.0).
	schema, err := os.ReadFile("/work/shared/z2jh/values.schema.yaml")
	if err != nil {
		t.Skip("z2jh schema not available")
	}
	for top, v := range docs[0] {
		if !strings.Contains(string(schema), "\n  "+top+":") {
			t.Errorf("top-level key %q not in the z2jh schema", top)
		}
		_ = v
	}
}

// TestRenderedHubwarden checks the admin's overlay with the e2e image: valid
// YAML, the loaded image, IfNotPresent, and a native sidecar.
func TestRenderedHubwarden(t *testing.T) {
	if _, err := os.Stat("../../z2jh-values/hubwarden.yaml"); err != nil {
		t.Skip("z2jh-values/hubwarden.yaml not in this tree yet")
	}
	out, code := runSh(t, "--render-hubwarden", "--image", "hubwarden:test")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	docs := yamlDocs(t, out)
	ics := docs[0]["singleuser"].(map[string]any)["initContainers"].([]any)
	var hw map[string]any
	for _, c := range ics {
		if c.(map[string]any)["name"] == "hubwarden" {
			hw = c.(map[string]any)
		}
	}
	if hw == nil {
		t.Fatalf("no hubwarden init container in:\n%s", out)
	}
	got := []any{hw["image"], hw["imagePullPolicy"], hw["restartPolicy"]}
	if diff := cmp.Diff([]any{"hubwarden:test", "IfNotPresent", "Always"}, got); diff != "" {
		t.Errorf("hubwarden init container (-want +got):\n%s", diff)
	}
}
