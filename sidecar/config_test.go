package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/guard"
	"github.com/hubwarden/hubwarden/units"
)

// cleanEnv clears every HUBWARDEN_* variable (and JUPYTERHUB_API_URL) for
// the test, then sets HUBWARDEN_USER (as KubeSpawner does; the guard needs
// the server's base URL, which it derives from it) and env.
func cleanEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, envPrefix+"_") {
			t.Setenv(k, "") // registers the restore
			os.Unsetenv(k)
		}
	}
	t.Setenv("JUPYTERHUB_API_URL", "")
	t.Setenv(envPrefix+"_USER", "jovyan")
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func writeResolvConf(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustContract(t *testing.T, mark uint32, budget units.Size) demotion.Contract {
	t.Helper()
	c, err := demotion.New(mark, budget)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadConfigDefaults(t *testing.T) {
	cleanEnv(t, nil)
	rc := writeResolvConf(t, "search default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\noptions ndots:5\n")
	c, err := loadConfig(rc)
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	want := &Config{
		LogLevel:         "info",
		User:             "jovyan",
		StateDir:         "/run/hubwarden",
		IptablesBackend:  "auto",
		IPv6:             "auto",
		StartupTimeout:   30 * time.Second,
		Egress:           true,
		DNSServers:       []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fe80::1")},
		DNSRate:          20,
		DNSBurst:         100,
		NFLogGroup:       1987,
		ResolveMinTTL:    30 * time.Second,
		Shape:            true,
		SlowRate:         1_000_000 / 8,
		CTMark:           0x100000,
		Contract:         mustContract(t, 0x100000, 64*units.MiB),
		Watch:            true,
		FlowBudget:       64 * units.MiB,
		FlowRefill:       units.Rate(units.MiB),
		PodBudget:        256 * units.MiB,
		PodRefill:        units.Rate(256 * units.KiB),
		PromoteIdle:      2 * time.Second,
		DumpInterval:     time.Second,
		ProgressInterval: time.Minute,
		// No HUBWARDEN_USER and no HUBWARDEN_SERVER_BASE_URL: no base URL,
		// which guard.Config.Validate refuses when the guard runs.
		Guard: guard.Config{Mode: guard.Enforce, ServerPort: 8888, GuardPort: 9281, BaseURL: "/user/jovyan/", MaxNotebook: 32 << 20,
			Terminals: true, ProgressInterval: time.Minute},
		HealthAddr:        ":9280",
		ReconcileInterval: 10 * time.Second,
		DenyLogWindow:     10 * time.Second,
		SelftestTarget:    netip.MustParseAddrPort("169.254.169.254:80"),
	}
	if diff := cmp.Diff(want, c, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
		cmp.Comparer(func(a, b demotion.Contract) bool { return a == b })); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

// TestLoadConfigIgnoresUnprefixed: envconfig would read ALLOW, USER,
// SHAPE... when the HUBWARDEN_ variable is unset; hubwarden must not.
func TestLoadConfigIgnoresUnprefixed(t *testing.T) {
	cleanEnv(t, map[string]string{
		"HUBWARDEN_DNS_SERVERS":     "198.18.0.53",
		"HUBWARDEN_USER":            "",
		"HUBWARDEN_SERVER_BASE_URL": "/user/alice/",
		"USER":                      "jovyan",
		"ALLOW":                     "0.0.0.0/0",
		"SHAPE":                     "false",
		"EGRESS":                    "false",
		"INTERFACE":                 "lo",
		"LOG_LEVEL":                 "verbose",
		"BLOCK":                     "not-a-cidr",
	})
	c, err := loadConfig("/nonexistent")
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	if c.User != "" || len(c.Allow) != 0 || !c.Shape || !c.Egress || c.Interface != "" || c.LogLevel != "info" || len(c.Block) != 0 {
		t.Errorf("unprefixed variables leaked into the config: %+v", c)
	}
}

func TestLoadConfigValues(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "the contract follows CTMARK and FLOW_BUDGET",
			env:  map[string]string{"HUBWARDEN_FLOW_BUDGET": "10MiB", "HUBWARDEN_CTMARK": "0x10"},
			check: func(t *testing.T, c *Config) {
				if c.Contract != mustContract(t, 0x10, 10*units.MiB) || c.Contract.Budget() != 10<<20 || c.Contract.Owned() != 0x3f0 {
					t.Errorf("contract %+v", c.Contract)
				}
			},
		},
		{
			name: "the backstop variables are deprecated: accepted, warned about",
			env:  map[string]string{"HUBWARDEN_BACKSTOP_BUDGET": "1GiB", "HUBWARDEN_BACKSTOP": "false"},
			check: func(t *testing.T, c *Config) {
				if len(c.Deprecated) != 2 || !strings.Contains(c.Deprecated[0], "HUBWARDEN_BACKSTOP has no effect") {
					t.Errorf("deprecation warnings %q", c.Deprecated)
				}
			},
		},
		{
			name: "hub API from JUPYTERHUB_API_URL",
			env:  map[string]string{"JUPYTERHUB_API_URL": "http://hub:8081/hub/api"},
			check: func(t *testing.T, c *Config) {
				want := []egress.Entry{{Host: "hub", Proto: egress.ProtoTCP, Ports: egress.PortRange{From: 8081, To: 8081}}}
				if diff := cmp.Diff(want, c.HubAPI, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
					t.Errorf("HubAPI (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "HUB_API_URL wins, https default port, IPv6 literal",
			env:  map[string]string{"JUPYTERHUB_API_URL": "http://hub:8081/hub/api", "HUBWARDEN_HUB_API_URL": "https://[2001:2::5]/hub/api"},
			check: func(t *testing.T, c *Config) {
				if len(c.HubAPI) != 1 || c.HubAPI[0].String() != "tcp://[2001:2::5]:443" {
					t.Errorf("HubAPI = %v, want tcp://[2001:2::5]:443", c.HubAPI)
				}
			},
		},
		{
			name: "lists, case and spacing",
			env: map[string]string{
				"HUBWARDEN_DNS_SERVERS": "198.18.0.53, 2001:2::53",
				"HUBWARDEN_ALLOW":       "198.18.1.0/24,tcp://pypi.org:443\nudp://[2001:2::7]:123",
				"HUBWARDEN_BLOCK":       "198.18.9.9,2001:2:9::/48",
				"HUBWARDEN_LOG_LEVEL":   "DEBUG",
			},
			check: func(t *testing.T, c *Config) {
				var got []string
				for _, e := range c.Allow {
					got = append(got, e.String())
				}
				if diff := cmp.Diff([]string{"198.18.1.0/24", "tcp://pypi.org:443", "udp://[2001:2::7]:123"}, got); diff != "" {
					t.Errorf("Allow (-want +got):\n%s", diff)
				}
				if len(c.DNSServers) != 2 || len(c.Block) != 2 || c.Block[0].String() != "198.18.9.9/32" || c.LogLevel != "debug" {
					t.Errorf("DNSServers %v, Block %v, LogLevel %q", c.DNSServers, c.Block, c.LogLevel)
				}
			},
		},
		{
			name: "guard: base URL derived from the user and server names, escaped as JupyterHub does",
			env:  map[string]string{"HUBWARDEN_USER": "jane doe@example.org", "HUBWARDEN_SERVER": "gpu 1"},
			check: func(t *testing.T, c *Config) {
				if c.Guard.BaseURL != "/user/jane%20doe@example.org/gpu%201/" || c.Guard.Validate() != nil {
					t.Errorf("guard %+v (%v)", c.Guard, c.Guard.Validate())
				}
			},
		},
		{
			name: "guard: explicit base URL (KubeSpawner expands the unescaped names), audit mode, terminals off, proxy prefixes",
			env: map[string]string{
				"HUBWARDEN_SERVER_BASE_URL": "/jhub/user/50% off/", "HUBWARDEN_GUARD": "audit", "HUBWARDEN_GUARD_TERMINALS": "false",
				"HUBWARDEN_GUARD_PROXY_ALLOW": "proxy/8050, rstudio/", "HUBWARDEN_GUARD_MAX_NOTEBOOK": "8MiB",
				"HUBWARDEN_SERVER_PORT": "8000", "HUBWARDEN_GUARD_PORT": "8001",
			},
			check: func(t *testing.T, c *Config) {
				want := guard.Config{Mode: guard.Audit, ServerPort: 8000, GuardPort: 8001, BaseURL: "/jhub/user/50%25%20off/",
					MaxNotebook: 8 << 20, Terminals: false, ProxyAllow: []string{"proxy/8050/", "rstudio/"}, ProgressInterval: time.Minute}
				if diff := cmp.Diff(want, c.Guard); diff != "" {
					t.Errorf("guard (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "egress off needs no resolvers",
			env:  map[string]string{"HUBWARDEN_EGRESS": "false"},
			check: func(t *testing.T, c *Config) {
				if c.Egress || len(c.DNSServers) != 0 {
					t.Errorf("Egress %v, DNSServers %v", c.Egress, c.DNSServers)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t, tt.env)
			c, err := loadConfig(writeResolvConf(t, "nameserver 10.96.0.10\n"))
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name       string
		env        map[string]string
		resolvConf string // content; "" means no file
		want       []string
	}{
		{
			name:       "unknown variable",
			env:        map[string]string{"HUBWARDEN_ALOW": "198.18.0.0/15", "HUBWARDEN_DNS_SERVERS": "198.18.0.53"},
			resolvConf: "nameserver 10.96.0.10\n",
			want:       []string{"HUBWARDEN_ALOW: unknown variable (a typo? see hubwarden --help)"},
		},
		{
			name:       "FAST_RATE 0: the way to no cap is empty",
			env:        map[string]string{"HUBWARDEN_FAST_RATE": "0bit", "HUBWARDEN_DNS_SERVERS": "198.18.0.53", "HUBWARDEN_GUARD": "off"},
			resolvConf: "nameserver 10.96.0.10\n",
			want:       []string{"HUBWARDEN_FAST_RATE: must be > 0; leave it empty for no cap"},
		},
		{
			name: "every problem at once, each named",
			env: map[string]string{
				"HUBWARDEN_LOG_LEVEL":        "verbose",
				"HUBWARDEN_STATE_DIR":        "run/hubwarden",
				"HUBWARDEN_IPTABLES_BACKEND": "iptables",
				"HUBWARDEN_IPV6":             "yes",
				"HUBWARDEN_STARTUP_TIMEOUT":  "10",
				"HUBWARDEN_EGRESS":           "maybe",
				"HUBWARDEN_ALLOW":            "tcp://[2001:2::1:443",
				"HUBWARDEN_DNS_SERVERS":      "dns.example.org",
				"HUBWARDEN_DNS_RATE":         "0",
				"HUBWARDEN_NFLOG_GROUP":      "70000",
				"HUBWARDEN_CTMARK":           "0x3",
				"HUBWARDEN_SLOW_RATE":        "2tbit",
				"HUBWARDEN_FAST_RATE":        "1tbit",
				"HUBWARDEN_FLOW_BUDGET":      "1GiB",
				"HUBWARDEN_POD_BUDGET":       "512MiB",
				"HUBWARDEN_HEALTH_ADDR":      "9280",
				"HUBWARDEN_SELFTEST_TARGET":  "metadata:80",
				"HUBWARDEN_TYPO":             "1",
			},
			resolvConf: "nameserver 10.96.0.10\n",
			want: []string{
				`HUBWARDEN_TYPO: unknown variable`,
				`HUBWARDEN_LOG_LEVEL: "verbose" is not one of`,
				`HUBWARDEN_STATE_DIR: "run/hubwarden" must be an absolute path`,
				`HUBWARDEN_IPTABLES_BACKEND: "iptables" is not one of auto, legacy, nft`,
				`HUBWARDEN_IPV6: "yes" is not one of auto, true, false`,
				`HUBWARDEN_STARTUP_TIMEOUT: "10" is not a duration`,
				`HUBWARDEN_EGRESS: "maybe" is not a boolean`,
				`HUBWARDEN_ALLOW: entry "tcp://[2001:2::1:443": missing ]`,
				`HUBWARDEN_DNS_SERVERS: "dns.example.org" is not an IP address`,
				`HUBWARDEN_DNS_RATE: "0" is not a whole number in 1-10000`,
				`HUBWARDEN_NFLOG_GROUP: "70000" is not a whole number in 0-65535`,
				`HUBWARDEN_CTMARK: "0x3" must be a single bit`,
				`HUBWARDEN_SLOW_RATE:`,
				`HUBWARDEN_FLOW_BUDGET: 1GiB must not exceed HUBWARDEN_POD_BUDGET (512MiB)`,
				`HUBWARDEN_HEALTH_ADDR: "9280" is not host:port`,
				`HUBWARDEN_SELFTEST_TARGET: "metadata:80" is not IP:port`,
			},
		},
		{
			name:       "a high mark bit leaves too few for the contract",
			env:        map[string]string{"HUBWARDEN_CTMARK": "0x8000000"},
			resolvConf: "nameserver 10.96.0.10\n",
			want:       []string{`HUBWARDEN_CTMARK: "0x8000000" leaves too few bits above it (hubwarden owns the five above the demoted bit); use at most 0x4000000`},
		},
		{
			name:       "a flow budget below the smallest tier",
			env:        map[string]string{"HUBWARDEN_FLOW_BUDGET": "32KiB"},
			resolvConf: "nameserver 10.96.0.10\n",
			want:       []string{`HUBWARDEN_FLOW_BUDGET: 32KiB is below the minimum 64KiB`},
		},
		{
			name: "no resolvers anywhere",
			want: []string{"HUBWARDEN_DNS_SERVERS: empty, and reading the nameservers of"},
		},
		{
			name:       "resolv.conf without nameservers",
			resolvConf: "search cluster.local\n",
			want:       []string{"HUBWARDEN_DNS_SERVERS: empty, and reading the nameservers of", "no nameserver lines"},
		},
		{
			name:       "bad JUPYTERHUB_API_URL is named",
			env:        map[string]string{"JUPYTERHUB_API_URL": "hub:8081"},
			resolvConf: "nameserver 10.96.0.10\n",
			want:       []string{`HUBWARDEN_HUB_API_URL (from JUPYTERHUB_API_URL): "hub:8081" is not an http(s) URL`},
		},
		{
			name: "guard variables, each named",
			env: map[string]string{
				"HUBWARDEN_DNS_SERVERS": "198.18.0.53", "HUBWARDEN_GUARD": "block", "HUBWARDEN_SERVER_PORT": "0",
				"HUBWARDEN_GUARD_PORT": "9280", "HUBWARDEN_SERVER_BASE_URL": "user/x", "HUBWARDEN_GUARD_MAX_NOTEBOOK": "32M",
				"HUBWARDEN_GUARD_TERMINALS": "no", "HUBWARDEN_GUARD_PROXY_ALLOW": "a/../b",
			},
			want: []string{"HUBWARDEN_GUARD: \"block\" is not one of enforce, audit, off", "HUBWARDEN_SERVER_PORT:", "HUBWARDEN_GUARD_PORT: 9280 is HUBWARDEN_HEALTH_ADDR's port",
				"HUBWARDEN_SERVER_BASE_URL:", "HUBWARDEN_GUARD_MAX_NOTEBOOK:", "HUBWARDEN_GUARD_TERMINALS:", "HUBWARDEN_GUARD_PROXY_ALLOW:"},
		},
		{
			name: "guard: a proxy prefix on a route the guard knows",
			env:  map[string]string{"HUBWARDEN_DNS_SERVERS": "198.18.0.53", "HUBWARDEN_USER": "jane", "HUBWARDEN_GUARD_PROXY_ALLOW": "files/", "HUBWARDEN_GUARD_PORT": "8888"},
			want: []string{"HUBWARDEN_GUARD_PROXY_ALLOW:", "would allow files", "HUBWARDEN_GUARD_PORT: 8888 must differ from HUBWARDEN_SERVER_PORT"},
		},
		{
			name:       "zero sizes and rates",
			env:        map[string]string{"HUBWARDEN_FLOW_BUDGET": "0", "HUBWARDEN_PROMOTE_IDLE": "1ms", "HUBWARDEN_POD_REFILL": "fast"},
			resolvConf: "nameserver 10.96.0.10\n",
			want:       []string{"HUBWARDEN_FLOW_BUDGET: must be > 0", "HUBWARDEN_PROMOTE_IDLE: 1ms is below the minimum 100ms", "HUBWARDEN_POD_REFILL:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t, tt.env)
			rc := filepath.Join(t.TempDir(), "missing-resolv.conf")
			if tt.resolvConf != "" {
				rc = writeResolvConf(t, tt.resolvConf)
			}
			_, err := loadConfig(rc)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("loadConfig error = %v, want a *ConfigError", err)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q:\n%s", w, msg)
				}
			}
			// One problem per line, each naming its variable.
			for _, p := range ce.Problems {
				if !strings.HasPrefix(p, envPrefix+"_") {
					t.Errorf("problem does not start with the variable name: %q", p)
				}
			}
			if tt.name == "every problem at once, each named" && len(ce.Problems) != len(tt.want) {
				t.Errorf("got %d problems, want %d (all at once):\n%s", len(ce.Problems), len(tt.want), msg)
			}
		})
	}
}

func TestUsageListsEveryVariable(t *testing.T) {
	var b strings.Builder
	if err := printUsage(&b); err != nil {
		t.Fatal(err)
	}
	for name := range knownVars() {
		if !strings.Contains(b.String(), name) {
			t.Errorf("--help does not list %s", name)
		}
	}
}

// FuzzLoadConfig checks that no value of a variable makes loading panic, and
// that a rejected value is named in the error.
func FuzzLoadConfig(f *testing.F) {
	f.Add("HUBWARDEN_ALLOW", "tcp://[2001:2::1]:443-80")
	f.Add("HUBWARDEN_FLOW_BUDGET", "1.5GiB")
	f.Add("HUBWARDEN_SLOW_RATE", "8mbit")
	f.Add("HUBWARDEN_CTMARK", "0x80000000")
	f.Add("HUBWARDEN_DNS_SERVERS", "::ffff:1.2.3.4")
	f.Add("HUBWARDEN_BLOCK", "1.2.3.4/33")
	f.Fuzz(func(t *testing.T, name, value string) {
		if !knownVars()[name] || strings.ContainsRune(value, 0) {
			return
		}
		cleanEnv(t, map[string]string{"HUBWARDEN_DNS_SERVERS": "198.18.0.53", name: value})
		_, err := loadConfig("/nonexistent")
		var ce *ConfigError
		if err != nil && errors.As(err, &ce) && !strings.Contains(err.Error(), name) && !strings.Contains(err.Error(), "DNS_SERVERS") && !strings.Contains(err.Error(), "HUBWARDEN_") {
			t.Errorf("error for %s=%q does not name a variable: %v", name, value, err)
		}
	})
}

// TestPackageDocListsEveryVariable keeps the package documentation's table
// in step with the code (regenerate it from `hubwarden --help`).
func TestPackageDocListsEveryVariable(t *testing.T) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var usage strings.Builder
	if err := printUsage(&usage); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(usage.String()), "\n") {
		if !strings.Contains(string(src), "//\t"+line+"\n") {
			t.Errorf("doc.go lacks, or has an outdated, line:\n%s", line)
		}
	}
}

// TestLoadConfigGuardNeedsBaseURL: the guard cannot route without the
// server's base URL; without it (and without HUBWARDEN_USER to derive it
// from) the configuration is refused before anything is detected or
// applied, by name, unless the guard is off.
func TestLoadConfigGuardNeedsBaseURL(t *testing.T) {
	cleanEnv(t, map[string]string{"HUBWARDEN_DNS_SERVERS": "198.18.0.53", "HUBWARDEN_USER": ""})
	_, err := loadConfig("/nonexistent")
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || !strings.HasPrefix(ce.Problems[0], "HUBWARDEN_SERVER_BASE_URL: empty") {
		t.Errorf("loadConfig = %v, want one problem naming HUBWARDEN_SERVER_BASE_URL", err)
	}
	t.Setenv("HUBWARDEN_GUARD", "off")
	if _, err := loadConfig("/nonexistent"); err != nil {
		t.Errorf("with the guard off: %v", err)
	}
}
