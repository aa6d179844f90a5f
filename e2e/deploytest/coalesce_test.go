package deploytest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCoalesce(t *testing.T) {
	defaults := map[string]any{
		"a": map[string]any{"keep": 1, "replace": 2, "drop": 3, "list": []any{"x"}},
		"b": "scalar",
		"c": nil,
	}
	user := map[string]any{
		"a": map[string]any{"replace": 20, "drop": nil, "list": []any{"y", "z"}, "new": true},
		"c": map[string]any{"set": "now"},
	}
	want := map[string]any{
		"a": map[string]any{"keep": 1, "replace": 20, "list": []any{"y", "z"}, "new": true},
		"b": "scalar",
		"c": map[string]any{"set": "now"},
	}
	got := coalesce(defaults, user)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("coalesce (-want +got):\n%s", diff)
	}
	if _, ok := defaults["a"].(map[string]any)["drop"]; !ok {
		t.Error("coalesce modified the defaults")
	}
}
