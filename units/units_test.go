package units

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    Size
		wantErr string
	}{
		{in: "4096", want: 4096},
		{in: "64MiB", want: 64 * MiB},
		{in: "64 mib", want: 64 * MiB},
		{in: "1.5GiB", want: 3 * GiB / 2},
		{in: "2MB", want: 2_000_000},
		{in: "1kB", want: 1000},
		{in: "10B", want: 10},
		{in: "1TiB", want: TiB},
		{in: "", wantErr: "empty"},
		{in: "MiB", wantErr: "does not start with a number"},
		{in: "64M", wantErr: "ambiguous"},
		{in: "64k", wantErr: "ambiguous"},
		{in: "3 furlongs", wantErr: "unknown unit"},
		{in: "-1MiB", wantErr: "does not start with a number"},
		{in: "1.2.3MiB", wantErr: "malformed"},
		{in: "99999999999999999999", wantErr: "out of range"},
		{in: "17179869184GiB", wantErr: "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSize(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSize(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    Rate
		wantErr string
	}{
		{in: "8mbit", want: 1_000_000},
		{in: "1mbit", want: 125_000},
		{in: "10gbit", want: 1_250_000_000},
		{in: "1.5gbit", want: 187_500_000},
		{in: "100kbit", want: 12_500},
		{in: "1bit", want: 1}, // never rounds a non-zero rate to zero
		{in: "1MB/s", want: 1_000_000},
		{in: "512KiB/s", want: 512 * 1024},
		{in: "1 MiB/s", want: 1 << 20},
		{in: "8", wantErr: "unit is required"},
		{in: "1mbps", wantErr: "ambiguous"},
		{in: "1kbps", wantErr: "ambiguous"},
		{in: "1M", wantErr: "ambiguous"},
		{in: "1/s", wantErr: "unknown unit"},
		{in: "1furlong/s", wantErr: "unknown unit"},
		{in: "fast", wantErr: "does not start with a number"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRate(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRate(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRate(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseRate(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestStringRoundTrip(t *testing.T) {
	for _, s := range []Size{0, 1, 1023, KiB, 64 * MiB, 3 * GiB, TiB + 1} {
		got, err := ParseSize(s.String())
		if err != nil || got != s {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s.String(), got, err, s)
		}
	}
	for _, r := range []Rate{1, 125, 125_000, 1_250_000_000, 187_500_000} {
		got, err := ParseRate(r.String())
		if err != nil || got != r {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", r.String(), got, err, r)
		}
	}
	if got := Rate(125_000).String(); got != "1mbit" {
		t.Errorf("Rate(125000).String() = %q, want 1mbit", got)
	}
}

// FuzzParseSize checks that parsing never panics and that every accepted size
// prints to a string that parses back to the same value.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"64MiB", "1.5GB", "0", "4096", "1e3", "..", "18446744073709551615", "9GiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			return
		}
		back, err := ParseSize(v.String())
		if err != nil || back != v {
			t.Fatalf("ParseSize(%q) = %d; String %q parses to %d, %v", s, v, v.String(), back, err)
		}
	})
}

// FuzzParseRate checks that parsing never panics, that a rate with a non-zero
// number is never zero, and that printed rates parse back unchanged.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"8mbit", "1MB/s", "1bit", "0.001kbit", "10gbit", "1.5 MiB/s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseRate(s)
		if err != nil {
			return
		}
		back, err := ParseRate(v.String())
		if err != nil {
			t.Fatalf("ParseRate(%q) = %d; String %q does not parse: %v", s, v, v.String(), err)
		}
		// Bit rates below one byte round up to one byte, so compare in bytes.
		if back != v {
			t.Fatalf("ParseRate(%q) = %d; String %q parses to %d", s, v, v.String(), back)
		}
	})
}
