package egress

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseEntry(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		in   string
		want Entry
		str  string // String(), when it differs from in
	}{
		{in: "198.51.100.0/24", want: Entry{Prefix: pfx("198.51.100.0/24")}},
		{in: "192.0.2.7", want: Entry{Prefix: pfx("192.0.2.7/32")}},
		{in: "192.0.2.7/32", want: Entry{Prefix: pfx("192.0.2.7/32")}, str: "192.0.2.7"},
		{in: "tcp://pypi.org:443", want: Entry{Host: "pypi.org", Proto: ProtoTCP, Ports: PortRange{443, 443}}},
		{in: "PyPI.Org.:443", want: Entry{Host: "pypi.org", Proto: ProtoTCP, Ports: PortRange{443, 443}}, str: "tcp://pypi.org:443"},
		{in: "udp://[2001:db8::1]:123", want: Entry{Prefix: pfx("2001:db8::1/128"), Proto: ProtoUDP, Ports: PortRange{123, 123}}},
		{in: "db.example.org:5432-5440", want: Entry{Host: "db.example.org", Proto: ProtoTCP, Ports: PortRange{5432, 5440}}, str: "tcp://db.example.org:5432-5440"},
		{in: "2001:db8::/32", want: Entry{Prefix: pfx("2001:db8::/32")}},
		{in: "[2001:db8::/32]:443", want: Entry{Prefix: pfx("2001:db8::/32"), Proto: ProtoTCP, Ports: PortRange{443, 443}}, str: "tcp://[2001:db8::/32]:443"},
		{in: "[2001:db8::1]", want: Entry{Prefix: pfx("2001:db8::1/128")}, str: "2001:db8::1"},
		{in: "UDP://ntp.example", want: Entry{Host: "ntp.example", Proto: ProtoUDP}, str: "udp://ntp.example"},
		{in: "tcp://hub", want: Entry{Host: "hub", Proto: ProtoTCP}},
		{in: "::ffff:192.0.2.1", want: Entry{Prefix: pfx("192.0.2.1/32")}, str: "192.0.2.1"},
		{in: "::ffff:192.0.2.0/120", want: Entry{Prefix: pfx("192.0.2.0/24")}, str: "192.0.2.0/24"},
		{in: "_sip._tcp.example.org", want: Entry{Host: "_sip._tcp.example.org"}},
		{in: "  10.0.0.0/8 ", want: Entry{Prefix: pfx("10.0.0.0/8")}, str: "10.0.0.0/8"},
		{in: "tcp://10.0.0.1:1-65535", want: Entry{Prefix: pfx("10.0.0.1/32"), Proto: ProtoTCP, Ports: PortRange{1, 65535}}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseEntry(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("ParseEntry(%q) (-want +got):\n%s", tt.in, diff)
			}
			str := tt.str
			if str == "" {
				str = tt.in
			}
			if got.String() != str {
				t.Errorf("String() = %q, want %q", got.String(), str)
			}
		})
	}
}

func TestParseEntryErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "empty entry"},
		{"http://example.org", `unknown protocol "http"`},
		{"tcp://", "empty destination"},
		{"192.0.2.1/24", "host bits set (did you mean 192.0.2.0/24?)"},
		{"192.0.2.0/33", "invalid CIDR"},
		{"fe80::1%eth0", "zones are not supported"},
		{"[2001:db8::1", "missing ]"},
		{"[2001:db8::1]x", "expected :PORT after ]"},
		{"[2001:db8::1]:", "expected :PORT after ]"},
		{"example.org:", `empty port after ":"`},
		{"example.org:0", `invalid port "0"`},
		{"example.org:65536", `invalid port "65536"`},
		{"example.org:90-80", "reversed"},
		{"example.org:80-", `invalid port ""`},
		{"example.org:http", `invalid port "http"`},
		{"1.2.3", `invalid address "1.2.3"`},
		{"256.1.1.1", `invalid address`},
		{"-bad.example", "starts or ends with -"},
		{"a..b", "empty or over-long label"},
		{"exa mple.org", "character ' '"},
		{"bücher.example", "character 'ü'"},
		{strings.Repeat("a", 64) + ".example", "empty or over-long label"},
		{strings.Repeat("abcdefghi.", 26) + "org", "length must be 1-253"},
		{"host:80:90", "character ':'"},
		{"tcp://a://b", `invalid port "//b"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseEntry(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseEntry(%q) error = %v, want one containing %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestParseEntries(t *testing.T) {
	got, err := ParseEntries("10.0.0.0/8, tcp://pypi.org:443\n udp://[2001:db8::1]:123\t,,")
	if err != nil {
		t.Fatal(err)
	}
	var strs []string
	for _, e := range got {
		strs = append(strs, e.String())
	}
	if diff := cmp.Diff([]string{"10.0.0.0/8", "tcp://pypi.org:443", "udp://[2001:db8::1]:123"}, strs); diff != "" {
		t.Errorf("ParseEntries (-want +got):\n%s", diff)
	}
	if got, err := ParseEntries(""); err != nil || got != nil {
		t.Errorf(`ParseEntries("") = %v, %v; want nil, nil`, got, err)
	}
	_, err = ParseEntries("bad/1, 10.0.0.0/8, x:0")
	if err == nil || !strings.Contains(err.Error(), `"bad/1"`) || !strings.Contains(err.Error(), `"x:0"`) {
		t.Errorf("ParseEntries error = %v, want both bad entries named", err)
	}
}

func FuzzParseEntry(f *testing.F) {
	for _, s := range []string{"198.51.100.0/24", "tcp://pypi.org:443", "udp://[2001:db8::1]:123", "db.example.org:5432-5440",
		"[2001:db8::/32]:443", "::ffff:192.0.2.1", "::ffff:192.0.2.0/120", "fe80::1%eth0", "UDP://x.", "[1.2.3.4]:80", "a,b c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEntry(s)
		if err != nil {
			return
		}
		if err := e.validate(); err != nil {
			t.Fatalf("ParseEntry(%q) = %+v, which does not validate: %v", s, e, err)
		}
		// String prints what ParseEntry reads back to the same entry.
		again, err := ParseEntry(e.String())
		if err != nil {
			t.Fatalf("ParseEntry(%q).String() = %q does not parse: %v", s, e.String(), err)
		}
		if again != e {
			t.Fatalf("round trip of %q: %+v != %+v", s, again, e)
		}
		if _, err := ParseEntries(e.String()); err != nil {
			t.Fatalf("ParseEntries(%q): %v", e.String(), err)
		}
	})
}
