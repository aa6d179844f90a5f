package main

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeListsEveryVariable keeps the README's configuration table true:
// every variable hubwarden reads appears in it with its default, and it names
// no variable hubwarden does not read.
func TestReadmeListsEveryVariable(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	known := knownVars()
	for k := range known {
		if !strings.Contains(readme, "`"+k+"`") {
			t.Errorf("README.md does not list %s", k)
		}
	}
	for _, f := range strings.FieldsFunc(readme, func(r rune) bool { return r == '`' || r == ' ' || r == '|' || r == '\n' }) {
		if strings.HasPrefix(f, envPrefix+"_") && !strings.Contains(f, "*") && strings.ToUpper(f) == f && !known[strings.Trim(f, ".,:;()")] {
			t.Errorf("README.md names %s, which hubwarden does not read", f)
		}
	}
}
