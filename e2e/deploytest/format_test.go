package deploytest

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPyFormat(t *testing.T) {
	ns := map[string]string{"username": "alice", "servername": ""}
	tests := []struct {
		name, in, want string
		errPart        string // empty: no error
	}{
		{name: "plain", in: "http://hub:8081/hub/api", want: "http://hub:8081/hub/api"},
		{name: "placeholder", in: "user={username}", want: "user=alice"},
		{name: "empty value", in: "[{servername}]", want: "[]"},
		{name: "two", in: "{username}--{servername}", want: "alice--"},
		{name: "doubled braces", in: "{{json}}", want: "{json}"},
		{name: "doubled around placeholder", in: "{{{username}}}", want: "{alice}"},
		{name: "json", in: `{"a": 1}`, errPart: "KeyError"},
		{name: "unknown", in: "{user}", errPart: "KeyError"},
		{name: "single close", in: "a}b", errPart: "single '}'"},
		{name: "unclosed", in: "a{username", errPart: "unclosed"},
		{name: "nested", in: "{username{x}}", errPart: "unclosed or nested"},
		{name: "positional", in: "{}", errPart: "positional"},
		{name: "spec", in: "{username:>10}", errPart: "plain placeholder"},
		{name: "conversion", in: "{username!r}", errPart: "plain placeholder"},
		{name: "attribute", in: "{username.upper}", errPart: "plain placeholder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PyFormat(tt.in, ns)
			if tt.errPart != "" {
				var fe *FormatError
				if !errors.As(err, &fe) || !strings.Contains(err.Error(), tt.errPart) {
					t.Fatalf("PyFormat(%q) = %q, %v; want a FormatError containing %q", tt.in, got, err, tt.errPart)
				}
				return
			}
			if err != nil {
				t.Fatalf("PyFormat(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("PyFormat(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// FuzzPyFormat checks invariants of the expansion: it never panics, a string
// without braces is unchanged, and doubling every brace of any string gives
// back that string.
func FuzzPyFormat(f *testing.F) {
	for _, s := range []string{"", "{username}", "{{", "}}", "{", "}", `{"a":1}`, "x{servername}y", "{{{username}}}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := PyFormat(s, Placeholders)
		if !strings.ContainsAny(s, "{}") && (err != nil || out != s) {
			t.Fatalf("PyFormat(%q) = %q, %v; want it unchanged", s, out, err)
		}
		escaped := strings.NewReplacer("{", "{{", "}", "}}").Replace(s)
		back, err := PyFormat(escaped, Placeholders)
		if err != nil || back != s {
			t.Fatalf("PyFormat(%q) = %q, %v; want %q", escaped, back, err, s)
		}
	})
}
