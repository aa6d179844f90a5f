package verify

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		want Options
		err  bool
	}{
		{nil, Options{Target: DefaultTarget, Metadata: DefaultMetadata, ReadyURL: DefaultReadyURL, Timeout: DefaultTimeout}, false},
		{[]string{"-target", "198.18.0.9:22", "-metadata", "198.18.0.1:80, [2001:2::1]:80", "-timeout", "1s", "-jupyter", "/opt/conda/bin/jupyter"},
			Options{Target: "198.18.0.9:22", Metadata: []string{"198.18.0.1:80", "[2001:2::1]:80"}, ReadyURL: DefaultReadyURL,
				Timeout: time.Second, Jupyter: "/opt/conda/bin/jupyter"}, false},
		{[]string{"-metadata", ""}, Options{Target: DefaultTarget, Metadata: []string{}, ReadyURL: DefaultReadyURL, Timeout: DefaultTimeout}, false},
		{[]string{"extra"}, Options{}, true},
		{[]string{"-nope"}, Options{}, true},
	}
	for _, tt := range tests {
		got, err := ParseFlags(tt.args, io.Discard)
		if (err != nil) != tt.err {
			t.Errorf("ParseFlags(%q) error %v, want error %v", tt.args, err, tt.err)
			continue
		}
		if err == nil {
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Options{}, "Env")); diff != "" {
				t.Errorf("ParseFlags(%q) (-want +got):\n%s", tt.args, diff)
			}
		}
	}
	if _, err := ParseFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func TestMainUsage(t *testing.T) {
	if code := Main(context.Background(), []string{"-h"}, io.Discard, io.Discard); code != 0 {
		t.Errorf("-h: exit %d, want 0", code)
	}
	var stderr strings.Builder
	if code := Main(context.Background(), []string{"-bogus"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "bogus") {
		t.Errorf("-bogus: exit %d, stderr %q; want 2 naming the flag", code, stderr.String())
	}
}
