package deploytest

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The chart's schema and defaults, copied from z2jh 4.4.0 (see
// testdata/README.md) so that the tests don't depend on files outside the
// repository.
const (
	schemaFile   = "testdata/values.schema.yaml"
	defaultsFile = "testdata/values.yaml"
)

// setup builds hubwarden from the repository root and loads the schema. The
// build is shared by the tests of one run.
func setup(t *testing.T) (*Schema, *Hubwarden, string) {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadSchema(schemaFile, defaultsFile)
	if err != nil {
		t.Fatal(err)
	}
	return s, buildHubwarden(t, root), root
}

var builtHubwarden string

func buildHubwarden(t *testing.T, root string) *Hubwarden {
	t.Helper()
	if builtHubwarden == "" {
		dir, err := os.MkdirTemp("", "deploytest-")
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "hubwarden")
		cmd := exec.Command("go", "build", "-o", bin, "./sidecar")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building hubwarden in %s: %v\n%s", root, err, out)
		}
		builtHubwarden = bin
	}
	hw, err := LoadHubwarden(builtHubwarden)
	if err != nil {
		t.Fatal(err)
	}
	if hw.ImageEnv, err = ReadImageEnv(filepath.Join(root, "images", "hubwarden", "Dockerfile")); err != nil {
		t.Fatal(err)
	}
	if hw.ImageEnv["XTABLES_LOCKFILE"] == "" {
		t.Fatal("images/hubwarden/Dockerfile sets no XTABLES_LOCKFILE")
	}
	return hw
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtHubwarden != "" {
		os.RemoveAll(filepath.Dir(builtHubwarden))
	}
	os.Exit(code)
}

func TestValuesFiles(t *testing.T) {
	s, hw, root := setup(t)
	if hw.PlanAvailable() {
		t.Log("variable values checked by hubwarden plan")
	} else {
		t.Log("hubwarden has no plan command yet: variable names checked against --help only")
	}
	files, err := filepath.Glob(filepath.Join(root, "z2jh-values", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("found %d values files in z2jh-values, want at least hubwarden.yaml and hubwarden-classic.yaml", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			problems, err := Check(f, s, hw)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Error(p)
			}
		})
	}
}

// TestNativeSidecar pins the ordering guarantee: in hubwarden.yaml the
// long-running hubwarden is a native sidecar gated by a startupProbe.
func TestNativeSidecar(t *testing.T) {
	_, _, root := setup(t)
	v, err := readYAMLAsJSONValue(filepath.Join(root, "z2jh-values", "hubwarden.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	single := v.(map[string]any)["singleuser"].(map[string]any)
	if single["extraContainers"] != nil {
		t.Errorf("hubwarden.yaml sets extraContainers; the native variant needs none")
	}
	inits, _ := single["initContainers"].([]any)
	if len(inits) != 1 {
		t.Fatalf("hubwarden.yaml has %d init containers, want 1", len(inits))
	}
	c := inits[0].(map[string]any)
	if c["restartPolicy"] != "Always" || c["startupProbe"] == nil {
		t.Errorf("hubwarden.yaml's init container: restartPolicy %v, startupProbe %v; want Always and a probe", c["restartPolicy"], c["startupProbe"])
	}
}

// TestCheckRejects proves the checker catches each mistake, one fixture per
// mistake.
func TestCheckRejects(t *testing.T) {
	s, hw, _ := setup(t)
	tests := []struct {
		file, want string
	}{
		{"bad-unknown-variable.yaml", "HUBWARDEN_FLOW_BUDGT: unknown variable"},
		{"bad-brace.yaml", "KeyError"},
		{"bad-doubled-brace.yaml", "a literal brace reaches the container"},
		{"bad-probe-port.yaml", "but hubwarden serves on"},
		{"bad-probe-path.yaml", "path /healthz, want /readyz"},
		{"bad-schema.yaml", "z2jh values schema"},
		{"bad-capabilities.yaml", "want [NET_ADMIN NET_RAW]"},
		{"bad-no-state-volume.yaml", "no such volume"},
		{"bad-metadata-iptables.yaml", "blockWithIptables must be false"},
		{"bad-not-native.yaml", "needs restartPolicy: Always"},
		{"bad-state-dir-moved.yaml", "XTABLES_LOCKFILE"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			problems, err := Check(filepath.Join("testdata", tt.file), s, hw)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				if strings.Contains(p, tt.want) {
					return
				}
			}
			t.Errorf("Check(%s) found %q; want a problem containing %q", tt.file, problems, tt.want)
		})
	}
}

// copied are the chart files in testdata, with the sha256 testdata/README.md
// gives for each.
var copied = map[string]string{
	"values.schema.yaml":       "1d9d48ee343efda1140edfc3de4d8ec4113ae9173bf9e44b83f19c2ca335a0dc",
	"values.yaml":              "d61742ce43e33262bb8fa0d68b6b9e7a7b229a3c7ce6d5a08cf97788c0ba796b",
	"hub-jupyterhub_config.py": "561cb70a05e1c2f563741edb6aec55fdc5f5be5a6e4ee980e862977feeb3e92a",
	"hub-z2jh.py":              "6312594f0c92f920da2d6c9fb232b97ab5e7dc29acdbfae950cb0ef8fe235790",
	"LICENSE-z2jh":             "a192af93da9457066f3fa6e4495a4fd529528d5cef82b3d37dcc793268395953",
}

// TestSchemaCopyCurrent checks the copied chart files against the sums in
// testdata/README.md, and against ../shared/z2jh when that directory exists
// beside the repository (the development machines' layout; a clean clone in
// CI has only the copies).
func TestSchemaCopyCurrent(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("testdata", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, sum := range copied {
		got, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if h := fmt.Sprintf("%x", sha256.Sum256(got)); h != sum {
			t.Errorf("testdata/%s has sha256 %s, want %s", name, h, sum)
		}
		if !strings.Contains(string(readme), sum) {
			t.Errorf("testdata/README.md does not give the sha256 of %s (%s)", name, sum)
		}
		shared := filepath.Join(root, "..", "shared", "z2jh", name)
		want, err := os.ReadFile(shared)
		if os.IsNotExist(err) {
			t.Logf("%s not present: checked the sum only", shared)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("testdata/%s differs from %s: copy it again and update testdata/README.md", name, shared)
		}
	}
}

// TestProbePathsServed checks that the paths the probes use are routes in
// hubwarden's own sources (the health server registers them as string
// literals), so that renaming a route without the values files fails here.
func TestProbePathsServed(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "e2e", "images", "docs", "bin":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, route := range []string{"/readyz", "/healthz"} {
			if strings.Contains(string(b), `"`+route+`"`) || strings.Contains(string(b), ` `+route+`"`) {
				found[route] = path
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) == 0 {
		t.Skip("no health server in the repository yet")
	}
	for _, route := range []string{"/readyz", "/healthz"} {
		if found[route] == "" {
			t.Errorf("the probes use %s, but no hubwarden source registers it", route)
		}
	}
}
