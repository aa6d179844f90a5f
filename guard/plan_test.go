package guard

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/xtables"
)

func planConfig() Config {
	return Config{Mode: Enforce, ServerPort: 8888, GuardPort: 9281, BaseURL: "/user/jane%20doe/", MaxNotebook: DefaultMaxNotebook,
		Terminals: true, IPv6: true, ProgressInterval: time.Minute}
}

// TestPlanGolden renders the guard's tables as iptables-restore documents.
func TestPlanGolden(t *testing.T) {
	r, err := Plan(planConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range [][]xtables.Table{r.NAT, r.Filter, r.Raw} {
		for _, tb := range ts {
			for _, c := range tb.Chains {
				for _, rule := range c.Rules {
					// iptables-save escapes a quote, which xtables does not
					// render: the kernel would never read back as planned.
					if strings.ContainsAny(rule.Comment, `'"\`) {
						t.Errorf("comment %q has a quote or backslash", rule.Comment)
					}
				}
			}
		}
	}
	if len(r.NAT) != 2 || len(r.Filter) != 2 || r.NAT[1].Family != xtables.IPv6 || r.Filter[1].Family != xtables.IPv6 {
		t.Fatalf("families: %+v", r)
	}
	for i := range r.NAT {
		wantNAT := `*nat
:HUBWARDEN-GUARD - [0:0]
:HUBWARDEN-GUARD-PROBE - [0:0]
-A HUBWARDEN-GUARD -p tcp -m tcp --dport 8888 -m comment --comment "hubwarden: guard: connections to the notebook server port 8888 go to the guard on 9281" -j REDIRECT --to-ports 9281
-A HUBWARDEN-GUARD-PROBE -p tcp -m mark --mark 0x4857 -m comment --comment "hubwarden: guard: the self-test probe takes the redirect from inside the pod" -j HUBWARDEN-GUARD
-I PREROUTING 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-GUARD
-I OUTPUT 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-GUARD-PROBE
COMMIT
`
		if diff := cmp.Diff(wantNAT, xtables.RenderWithHooks(r.NAT[i], r.NAT[i].Hooks, nil)); diff != "" {
			t.Errorf("nat %s (-want +got):\n%s", r.NAT[i].Family, diff)
		}
		wantFilter := `*filter
:HUBWARDEN-GUARD-IN - [0:0]
-A HUBWARDEN-GUARD-IN -p tcp -m tcp --dport 9281 --tcp-flags FIN,SYN,RST,ACK SYN -m socket --transparent --nowildcard -m comment --comment "hubwarden: guard: only a transparent socket (the guard) takes port 9281" -j RETURN
-A HUBWARDEN-GUARD-IN -p tcp -m tcp --dport 9281 --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "hubwarden: guard: refuse port 9281 to any other socket (fail closed)" -j REJECT --reject-with tcp-reset
-I INPUT 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-GUARD-IN
COMMIT
`
		if diff := cmp.Diff(wantFilter, xtables.RenderWithHooks(r.Filter[i], r.Filter[i].Hooks, nil)); diff != "" {
			t.Errorf("filter %s (-want +got):\n%s", r.Filter[i].Family, diff)
		}
		wantRaw := `*raw
:HUBWARDEN-GUARD-RAW - [0:0]
-A HUBWARDEN-GUARD-RAW -o lo -p tcp -m mark --mark 0x4857 -m comment --comment "hubwarden: guard: the self-test probe is tracked (so it can be redirected)" -j ACCEPT
-A HUBWARDEN-GUARD-RAW -o lo -p tcp -m tcp --sport 9281 -m comment --comment "hubwarden: guard: answers from the guard port on loopback are tracked (those to the probe come back through the redirect)" -j ACCEPT
-I OUTPUT 1 -o lo -m comment --comment "hubwarden: hook" -j HUBWARDEN-GUARD-RAW
COMMIT
`
		if diff := cmp.Diff(wantRaw, xtables.RenderWithHooks(r.Raw[i], r.Raw[i].Hooks, nil)); diff != "" {
			t.Errorf("raw %s (-want +got):\n%s", r.Raw[i].Family, diff)
		}
	}
}

// TestPlanOff: with the guard off the nat tables are empty (removing an
// earlier redirect) and the filter part has no chain.
func TestPlanOff(t *testing.T) {
	c := planConfig()
	c.Mode, c.IPv6 = Off, false
	r, err := Plan(c)
	if err != nil {
		t.Fatal(err)
	}
	want := Rules{NAT: []xtables.Table{{Family: xtables.IPv4, Name: "nat"}}, Filter: []xtables.Table{{Family: xtables.IPv4, Name: "filter"}},
		Raw: []xtables.Table{{Family: xtables.IPv4, Name: "raw"}}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestPlanMergesWithEgress: the guard's filter and raw parts merged into
// egress's tables (the seam the composition uses) validate, with the
// guard's raw hook ahead of egress's loopback notrack.
func TestPlanMergesWithEgress(t *testing.T) {
	r, err := Plan(planConfig())
	if err != nil {
		t.Fatal(err)
	}
	filter := xtables.Table{Family: xtables.IPv4, Name: "filter",
		Chains: []xtables.Chain{{Name: "HUBWARDEN-EGRESS", Rules: []xtables.Rule{{Args: []string{"-j", "ACCEPT"}, Comment: "x"}}}},
		Hooks:  []xtables.Hook{{Base: "OUTPUT", Target: "HUBWARDEN-EGRESS"}}}
	if err := MergeTables(filter, r.Filter[0]).Validate(); err != nil {
		t.Fatal(err)
	}
	raw, err := egress.RawTables(true, false) // with the egress filter, which holds the spoof rule
	if err != nil {
		t.Fatal(err)
	}
	for i := range raw {
		m := MergeTables(r.Raw[i], raw[i])
		if err := m.Validate(); err != nil {
			t.Fatal(err)
		}
		if m.Hooks[0].Target != ChainRaw || m.Hooks[0].Base != "OUTPUT" {
			t.Errorf("raw hooks %v: the guard's must come first", m.Hooks)
		}
	}
}

func TestPlanRefusesBadConfig(t *testing.T) {
	c := planConfig()
	c.GuardPort = c.ServerPort
	if _, err := Plan(c); err == nil || !strings.Contains(err.Error(), "HUBWARDEN_GUARD_PORT") {
		t.Errorf("err %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := planConfig()
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"mode", func(c *Config) { c.Mode = "block" }, []string{"HUBWARDEN_GUARD"}},
		{"ports", func(c *Config) { c.ServerPort, c.GuardPort = 0, 0 }, []string{"HUBWARDEN_SERVER_PORT", "HUBWARDEN_GUARD_PORT"}},
		{"same port", func(c *Config) { c.GuardPort = 8888 }, []string{"HUBWARDEN_GUARD_PORT (8888) must differ"}},
		{"no base", func(c *Config) { c.BaseURL = "" }, []string{"HUBWARDEN_SERVER_BASE_URL is empty and HUBWARDEN_USER"}},
		{"root base", func(c *Config) { c.BaseURL = "/" }, []string{"HUBWARDEN_SERVER_BASE_URL"}},
		{"unescaped base", func(c *Config) { c.BaseURL = "/user/a b/" }, []string{"HUBWARDEN_SERVER_BASE_URL"}},
		{"regexp base", func(c *Config) { c.BaseURL = "/user/a+b/" }, []string{"HUBWARDEN_SERVER_BASE_URL"}},
		{"cap", func(c *Config) { c.MaxNotebook = 0 }, []string{"HUBWARDEN_GUARD_MAX_NOTEBOOK"}},
		{"proxy prefix on a known route", func(c *Config) { c.ProxyAllow = []string{"files/"} }, []string{"HUBWARDEN_GUARD_PROXY_ALLOW", "files"}},
		{"proxy prefix on lab", func(c *Config) { c.ProxyAllow = []string{"lab/"} }, []string{"HUBWARDEN_GUARD_PROXY_ALLOW"}},
		{"proxy prefix on contents", func(c *Config) { c.ProxyAllow = []string{"api/contents/"} }, []string{"HUBWARDEN_GUARD_PROXY_ALLOW"}},
	} {
		c := ok
		tc.mod(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want %q", tc.name, err, w)
			}
		}
	}
	c := ok
	c.ProxyAllow = []string{"proxy/8050/", "rstudio/"}
	if err := c.Validate(); err != nil {
		t.Errorf("proxy prefixes: %v", err)
	}
	c = ok
	c.Mode, c.BaseURL = Off, ""
	if err := c.Validate(); err != nil {
		t.Errorf("off needs nothing else: %v", err)
	}
}

func TestEscapeBaseURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/user/jane doe/", "/user/jane%20doe/"},
		{"/user/jane doe/gpu 1", "/user/jane%20doe/gpu%201/"},
		{"/user/jane@example.org/", "/user/jane@example.org/"},
		{"/user/50%/", "/user/50%25/"},
		{"/user/a.b~c_d-e/", "/user/a.b~c_d-e/"},
		{"/user/ü/", "/user/%C3%BC/"},
		{"/user/{x}+y/", "/user/%7Bx%7D%2By/"},
		{"/jhub/user/a//", "/jhub/user/a/"},
	} {
		got, err := EscapeBaseURL(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("EscapeBaseURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "user/a", "/", "//", "/user/../a"} {
		if got, err := EscapeBaseURL(bad); err == nil {
			t.Errorf("EscapeBaseURL(%q) = %q, want an error", bad, got)
		}
	}
	if got, err := DeriveBaseURL("jane doe", ""); err != nil || got != "/user/jane%20doe/" {
		t.Errorf("DeriveBaseURL: %q %v", got, err)
	}
	if got, err := DeriveBaseURL("jane", "gpu"); err != nil || got != "/user/jane/gpu/" {
		t.Errorf("DeriveBaseURL named: %q %v", got, err)
	}
	if _, err := DeriveBaseURL("", ""); err == nil {
		t.Error("DeriveBaseURL without a user")
	}
}

func TestParseProxyAllow(t *testing.T) {
	got, err := ParseProxyAllow(" proxy/8050 , /rstudio/,")
	if err != nil || strings.Join(got, " ") != "proxy/8050/ rstudio/" {
		t.Errorf("%q %v", got, err)
	}
	for _, bad := range []string{"/", "a/../b", "a//b", "a;b"} {
		if _, err := ParseProxyAllow(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"enforce": Enforce, "AUDIT": Audit, " off ": Off} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	if _, err := ParseMode("on"); err == nil {
		t.Error("on")
	}
}

// TestValuesFilesBaseURL: both z2jh values files give the guard the
// server's base URL through KubeSpawner's unescaped placeholders, which
// works for user and server names that JupyterHub escapes in URLs, and for
// the default server (an empty server name).
func TestValuesFilesBaseURL(t *testing.T) {
	re := regexp.MustCompile(`(?m)^\s*- name: HUBWARDEN_SERVER_BASE_URL\n\s*value: "([^"]*)"`)
	for _, f := range []string{"../z2jh-values/hubwarden.yaml", "../z2jh-values/hubwarden-classic.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindSubmatch(b)
		if m == nil {
			t.Errorf("%s: no HUBWARDEN_SERVER_BASE_URL", f)
			continue
		}
		for _, tc := range []struct{ user, server, want string }{
			{"Jane Doe+1@example.org", "gpu 2", "/user/Jane%20Doe%2B1@example.org/gpu%202/"},
			{"jane", "", "/user/jane/"},
			{"élise", "", "/user/%C3%A9lise/"},
			{"100%", "a{b}", "/user/100%25/a%7Bb%7D/"},
		} {
			// KubeSpawner's str.format: the values replace the placeholders as they are.
			v := strings.NewReplacer("{unescaped_username}", tc.user, "{unescaped_servername}", tc.server).Replace(string(m[1]))
			got, err := EscapeBaseURL(v)
			if err != nil || got != tc.want {
				t.Errorf("%s with user %q server %q: %q (%v), want %q", f, tc.user, tc.server, got, err, tc.want)
			}
		}
	}
}
