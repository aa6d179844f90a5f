package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/guard"
	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/warden"
)

// envPrefix is the prefix of every variable hubwarden reads.
const envPrefix = "HUBWARDEN"

// rawConfig is the environment as strings, with defaults and descriptions.
// Every field is a string so that loading never stops at the first bad value:
// parse() reports all of them at once, each by name.
type rawConfig struct {
	LogLevel        string `envconfig:"LOG_LEVEL" default:"info" desc:"log level: debug, info, warn or error"`
	User            string `envconfig:"USER" default:"" desc:"user name written on every audit line (z2jh: {username})"`
	Server          string `envconfig:"SERVER" default:"" desc:"server name written on every audit line (z2jh: {servername})"`
	StateDir        string `envconfig:"STATE_DIR" default:"/run/hubwarden" desc:"directory that survives container restarts (an emptyDir): what start-up detected (iptables backend, pod gate, leaf qdiscs), pod budget level"`
	IptablesBackend string `envconfig:"IPTABLES_BACKEND" default:"auto" desc:"iptables backend: auto (probe once, then remember in STATE_DIR), legacy or nft"`
	IPv6            string `envconfig:"IPV6" default:"auto" desc:"apply IPv6 rules: auto (when the kernel has IPv6), true (fail if it cannot) or false"`
	StartupTimeout  string `envconfig:"STARTUP_TIMEOUT" default:"30s" desc:"deadline for apply and self-test at start; a hang becomes a crash that Kubernetes restarts"`

	Egress        string `envconfig:"EGRESS" default:"true" desc:"filter egress: default deny, allow-list, DNS only to the resolvers, metadata always blocked"`
	Allow         string `envconfig:"ALLOW" default:"" desc:"allow-list, comma separated: [tcp://|udp://]DEST[:PORT[-PORT]], DEST an IP, a CIDR, [IPv6] or a host name (re-resolved on its TTL)"`
	DNSServers    string `envconfig:"DNS_SERVERS" default:"" desc:"resolvers the pod may query (UDP and TCP 53), comma separated; empty: the nameservers of /etc/resolv.conf"`
	DNSRate       string `envconfig:"DNS_RATE" default:"20" desc:"DNS packets per second the pod may send to the resolvers (beyond the burst); bounds DNS tunnelling"`
	DNSBurst      string `envconfig:"DNS_BURST" default:"100" desc:"DNS packets the pod may send in a burst before DNS_RATE applies"`
	HubAPIURL     string `envconfig:"HUB_API_URL" default:"" desc:"the hub API the server must reach; empty: JUPYTERHUB_API_URL; its host and port are allowed"`
	Block         string `envconfig:"BLOCK" default:"" desc:"extra CIDRs always rejected, even if an allow entry covers them (169.254.169.254 and fd00:ec2::254 always are)"`
	NFLogGroup    string `envconfig:"NFLOG_GROUP" default:"1987" desc:"NFLOG group that denied packets are logged to (0-65535)"`
	ResolveMinTTL string `envconfig:"RESOLVE_MIN_TTL" default:"30s" desc:"shortest interval between re-resolutions of an allow-list host name, whatever its TTL"`

	Shape     string `envconfig:"SHAPE" default:"true" desc:"shape pod egress with HTB: a slow class for demoted flows; the rest leaves unshaped (HTB's direct queue) unless FAST_RATE caps it"`
	Interface string `envconfig:"INTERFACE" default:"" desc:"interface to shape; empty: the interface of the default route"`
	FastRate  string `envconfig:"FAST_RATE" default:"" desc:"a cap on everything the pod sends (a fast class for what is not demoted); empty: no cap, what is not demoted takes HTB's direct queue, with no class and no rate"`
	SlowRate  string `envconfig:"SLOW_RATE" default:"1mbit" desc:"rate shared by all demoted flows of the pod"`
	CTMark    string `envconfig:"CTMARK" default:"0x100000" desc:"the connection-mark bit of demoted flows (exactly one bit, at most 0x4000000); hubwarden also owns the five bits above it (attention and the tripwire tier) and leaves every other bit alone"`

	Watch            string `envconfig:"WATCH" default:"true" desc:"run the conntrack watcher (budgets, demotion, promotion, audit)"`
	FlowBudget       string `envconfig:"FLOW_BUDGET" default:"64MiB" desc:"per-flow token bucket burst: bytes a flow may send fast before it is demoted"`
	FlowRefill       string `envconfig:"FLOW_REFILL" default:"1MiB/s" desc:"per-flow token bucket refill"`
	PodBudget        string `envconfig:"POD_BUDGET" default:"256MiB" desc:"per-pod token bucket burst over all flows: bounds parallel and short connections"`
	PodRefill        string `envconfig:"POD_REFILL" default:"256KiB/s" desc:"per-pod token bucket refill: the long-run rate a user can move data out (slow bytes count against it too)"`
	PromoteIdle      string `envconfig:"PROMOTE_IDLE" default:"2s" desc:"a demoted flow idle this long is promoted back to the fast path, if the pod bucket allows"`
	DumpInterval     string `envconfig:"DUMP_INTERVAL" default:"1s" desc:"how often each demoted flow is read to see whether it went idle (to promote it); also the interval between conntrack dumps while a flow is busy or the kernel's events cannot be relied on (otherwise a dump every 10 s, or DUMP_INTERVAL if longer)"`
	ProgressInterval string `envconfig:"PROGRESS_INTERVAL" default:"60s" desc:"interval of audit progress lines for long-lived flows"`

	Guard            string `envconfig:"GUARD" default:"enforce" desc:"HTTP guard in front of the notebook server: enforce (serve notebooks only, refuse download routes), audit (decide and log every request, refuse nothing) or off (no redirect)"`
	ServerPort       string `envconfig:"SERVER_PORT" default:"8888" desc:"the notebook server's port (z2jh's notebook-port); inbound connections to it are redirected to the guard"`
	GuardPort        string `envconfig:"GUARD_PORT" default:"9281" desc:"port the guard listens on; only its own (transparent) socket may take connections there"`
	ServerBaseURL    string `envconfig:"SERVER_BASE_URL" default:"" desc:"the server's base URL as JupyterHub builds it, unescaped (z2jh: /user/{unescaped_username}/{unescaped_servername}); the guard escapes it as JupyterHub does and refuses every request outside it; empty: /user/USER/SERVER/ from HUBWARDEN_USER and HUBWARDEN_SERVER"`
	GuardMaxNotebook string `envconfig:"GUARD_MAX_NOTEBOOK" default:"32MiB" desc:"largest notebook (and directory listing) the guard passes, as the server's JSON model"`
	GuardTerminals   string `envconfig:"GUARD_TERMINALS" default:"true" desc:"allow terminals (false refuses the terminal pages, API and websockets)"`
	GuardProxyAllow  string `envconfig:"GUARD_PROXY_ALLOW" default:"" desc:"path prefixes under the base URL the guard passes unchecked, comma separated (jupyter-server-proxy services like proxy/8050/ or rstudio/, other extensions); none by default"`

	HealthAddr        string `envconfig:"HEALTH_ADDR" default:":9280" desc:"address of the read-only HTTP server: /healthz, /readyz, /metrics"`
	ReconcileInterval string `envconfig:"RECONCILE_INTERVAL" default:"10s" desc:"interval of the drift check that re-applies hubwarden's rules and qdiscs"`
	DenyLogWindow     string `envconfig:"DENY_LOG_WINDOW" default:"10s" desc:"window over which denied packets are aggregated into one log line per destination"`
	SelftestTarget    string `envconfig:"SELFTEST_TARGET" default:"169.254.169.254:80" desc:"address the self-test connects to and must see refused (rejected locally, nothing leaves the pod)"`
}

// Config is the validated configuration (warden.Config: the composition is
// given it once).
type Config = warden.Config

// ConfigError lists every invalid or unknown variable.
type ConfigError struct{ Problems []string }

func (e *ConfigError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// loadConfig reads, parses and validates the configuration from the process
// environment. resolvConf is the path of resolv.conf, read only when
// HUBWARDEN_DNS_SERVERS is empty.
func loadConfig(resolvConf string) (*Config, error) {
	var raw rawConfig
	// Every field is a string, so Process only applies defaults and cannot fail
	// on a value; parse reports the problems.
	if err := envconfig.Process(envPrefix, &raw); err != nil {
		return nil, fmt.Errorf("reading the environment: %w", err)
	}
	onlyPrefixed(&raw)
	problems := unknownVars(os.Environ())
	c, more := raw.parse(resolvConf)
	problems = append(problems, more...)
	if len(problems) > 0 {
		return nil, &ConfigError{Problems: problems}
	}
	c.Deprecated = deprecatedSet(os.Environ())
	return c, nil
}

// onlyPrefixed undoes envconfig's fallback to the unprefixed name: when
// HUBWARDEN_ALLOW is unset, envconfig reads ALLOW (and USER, SHAPE,
// INTERFACE, ...), so an unrelated variable of the image or the pod would
// configure hubwarden (ALLOW=0.0.0.0/0 would open egress). A field whose
// HUBWARDEN_ variable is unset gets its default.
func onlyPrefixed(raw *rawConfig) {
	v := reflect.ValueOf(raw).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if _, ok := os.LookupEnv(envPrefix + "_" + f.Tag.Get("envconfig")); !ok {
			v.Field(i).SetString(f.Tag.Get("default"))
		}
	}
}

// knownVars returns the names of every variable hubwarden reads.
func knownVars() map[string]bool {
	known := map[string]bool{}
	t := reflect.TypeFor[rawConfig]()
	for i := range t.NumField() {
		known[envPrefix+"_"+t.Field(i).Tag.Get("envconfig")] = true
	}
	return known
}

// serviceLink reports whether k is one of the variables Kubernetes injects into
// every container for a Service named "hubwarden" (HUBWARDEN_SERVICE_HOST,
// HUBWARDEN_PORT_9280_TCP_ADDR, ...); they are not typos and must not stop the pod.
func serviceLink(k string) bool {
	return k == envPrefix+"_PORT" || strings.HasPrefix(k, envPrefix+"_SERVICE_") || strings.HasPrefix(k, envPrefix+"_PORT_")
}

// unknownVars names HUBWARDEN_* variables that hubwarden does not read (typos).
func unknownVars(environ []string) []string {
	known := knownVars()
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if _, dep := deprecated[k]; strings.HasPrefix(k, envPrefix+"_") && !known[k] && !serviceLink(k) && !dep {
			out = append(out, fmt.Sprintf("%s: unknown variable (a typo? see hubwarden --help)", k))
		}
	}
	sort.Strings(out)
	return out
}

func (r *rawConfig) parse(resolvConf string) (*Config, []string) {
	c := &Config{User: r.User, Server: r.Server, StateDir: r.StateDir, Interface: r.Interface, HealthAddr: r.HealthAddr}
	var problems []string
	bad := func(name string, err error) {
		problems = append(problems, fmt.Sprintf("%s_%s: %v", envPrefix, name, err))
	}
	oneOf := func(name, v string, allowed ...string) string {
		for _, a := range allowed {
			if v == a {
				return v
			}
		}
		bad(name, fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", ")))
		return ""
	}
	boolean := func(name, v string) bool {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad(name, fmt.Errorf("%q is not a boolean (true or false)", v))
		}
		return b
	}
	dur := func(name, v string, least time.Duration) time.Duration {
		d, err := time.ParseDuration(v)
		if err != nil {
			bad(name, fmt.Errorf("%q is not a duration (like 500ms, 10s, 2m)", v))
			return 0
		}
		if d < least {
			bad(name, fmt.Errorf("%s is below the minimum %s", d, least))
		}
		return d
	}
	size := func(name, v string) units.Size {
		s, err := units.ParseSize(v)
		if err != nil {
			bad(name, err)
		} else if s == 0 {
			bad(name, errors.New("must be > 0"))
		}
		return s
	}
	rate := func(name, v string) units.Rate {
		s, err := units.ParseRate(v)
		if err != nil {
			bad(name, err)
		} else if s == 0 {
			bad(name, errors.New("must be > 0"))
		}
		return s
	}
	uint32Of := func(name, v string, lo, hi uint64) uint32 {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n < lo || n > hi {
			bad(name, fmt.Errorf("%q is not a whole number in %d-%d", v, lo, hi))
		}
		return uint32(n)
	}

	switch strings.ToLower(r.LogLevel) {
	case "debug", "info", "warn", "error":
		c.LogLevel = strings.ToLower(r.LogLevel)
	default:
		bad("LOG_LEVEL", fmt.Errorf("%q is not one of debug, info, warn, error", r.LogLevel))
	}
	if r.StateDir == "" || !strings.HasPrefix(r.StateDir, "/") {
		bad("STATE_DIR", fmt.Errorf("%q must be an absolute path", r.StateDir))
	}
	c.IptablesBackend = oneOf("IPTABLES_BACKEND", r.IptablesBackend, "auto", "legacy", "nft")
	c.IPv6 = oneOf("IPV6", r.IPv6, "auto", "true", "false")
	c.StartupTimeout = dur("STARTUP_TIMEOUT", r.StartupTimeout, time.Second)

	c.Egress = boolean("EGRESS", r.Egress)
	if allow, err := egress.ParseEntries(r.Allow); err != nil {
		bad("ALLOW", err)
	} else {
		c.Allow = allow
	}
	c.DNSRate = uint32Of("DNS_RATE", r.DNSRate, 1, 10000)
	c.DNSBurst = uint32Of("DNS_BURST", r.DNSBurst, 1, 10000)
	if n := uint32Of("NFLOG_GROUP", r.NFLogGroup, 0, 65535); n <= 65535 {
		c.NFLogGroup = uint16(n)
	}
	c.ResolveMinTTL = dur("RESOLVE_MIN_TTL", r.ResolveMinTTL, time.Second)
	for _, f := range splitList(r.Block) {
		p, err := parsePrefixOrAddr(f)
		if err != nil {
			bad("BLOCK", err)
			continue
		}
		c.Block = append(c.Block, p)
	}
	dnsList := r.DNSServers
	dnsName := "DNS_SERVERS"
	if strings.TrimSpace(dnsList) == "" && c.Egress {
		servers, err := readResolvConf(resolvConf)
		if err != nil {
			bad("DNS_SERVERS", fmt.Errorf("empty, and reading the nameservers of %s: %w", resolvConf, err))
		}
		dnsList = strings.Join(servers, ",")
		dnsName = "DNS_SERVERS (from " + resolvConf + ")"
	}
	for _, f := range splitList(dnsList) {
		a, err := netip.ParseAddr(f)
		if err != nil || a.Zone() != "" {
			bad(dnsName, fmt.Errorf("%q is not an IP address", f))
			continue
		}
		c.DNSServers = append(c.DNSServers, a.Unmap())
	}
	hubURL, hubName := r.HubAPIURL, "HUB_API_URL"
	if hubURL == "" {
		hubURL = os.Getenv("JUPYTERHUB_API_URL")
		hubName = "HUB_API_URL (from JUPYTERHUB_API_URL)"
	}
	if hubURL != "" {
		ent, err := hubEntry(hubURL)
		if err != nil {
			bad(hubName, err)
		} else {
			c.HubAPI = []egress.Entry{ent}
		}
	}

	c.Shape = boolean("SHAPE", r.Shape)
	if r.FastRate != "" { // empty: no cap
		switch f, err := units.ParseRate(r.FastRate); {
		case err != nil:
			bad("FAST_RATE", err)
		case f == 0:
			bad("FAST_RATE", errors.New("must be > 0; leave it empty for no cap"))
		default:
			c.FastRate = f
		}
	}
	c.SlowRate = rate("SLOW_RATE", r.SlowRate)
	if c.Shape && c.SlowRate >= c.FastRate && c.FastRate != 0 {
		bad("SLOW_RATE", fmt.Errorf("%s must be below HUBWARDEN_FAST_RATE (%s)", c.SlowRate, c.FastRate))
	}
	if m, err := strconv.ParseUint(r.CTMark, 0, 32); err != nil || bits.OnesCount64(m) != 1 {
		bad("CTMARK", fmt.Errorf("%q must be a single bit, like 0x100000", r.CTMark))
	} else if m > uint64(demotion.MaxCTMark) {
		bad("CTMARK", fmt.Errorf("%q leaves too few bits above it (hubwarden owns the five above the demoted bit); use at most %#x", r.CTMark, demotion.MaxCTMark))
	} else {
		c.CTMark = uint32(m)
	}

	c.Watch = boolean("WATCH", r.Watch)
	c.FlowBudget = size("FLOW_BUDGET", r.FlowBudget)
	c.FlowRefill = rate("FLOW_REFILL", r.FlowRefill)
	c.PodBudget = size("POD_BUDGET", r.PodBudget)
	c.PodRefill = rate("POD_REFILL", r.PodRefill)
	if c.PodBudget != 0 && c.FlowBudget > c.PodBudget {
		bad("FLOW_BUDGET", fmt.Errorf("%s must not exceed HUBWARDEN_POD_BUDGET (%s)", c.FlowBudget, c.PodBudget))
	}
	if c.FlowBudget != 0 && c.FlowBudget < demotion.MinFlowBudget {
		bad("FLOW_BUDGET", fmt.Errorf("%s is below the minimum %s (the smallest tripwire tier, 1/64 of it, must be at least 1KiB)", c.FlowBudget, demotion.MinFlowBudget))
	} else if c.CTMark != 0 && c.FlowBudget != 0 {
		k, err := demotion.New(c.CTMark, c.FlowBudget)
		if err != nil {
			bad("CTMARK", err)
		}
		c.Contract = k
	}
	c.PromoteIdle = dur("PROMOTE_IDLE", r.PromoteIdle, 100*time.Millisecond)
	c.DumpInterval = dur("DUMP_INTERVAL", r.DumpInterval, 10*time.Millisecond)
	c.ProgressInterval = dur("PROGRESS_INTERVAL", r.ProgressInterval, time.Second)
	var healthPort uint64
	if _, p, err := net.SplitHostPort(r.HealthAddr); err != nil {
		bad("HEALTH_ADDR", fmt.Errorf("%q is not host:port", r.HealthAddr))
	} else {
		healthPort, _ = strconv.ParseUint(p, 10, 16)
	}
	parseGuard(c, r, bad, boolean, size, uint32Of, healthPort)
	c.ReconcileInterval = dur("RECONCILE_INTERVAL", r.ReconcileInterval, time.Second)
	c.DenyLogWindow = dur("DENY_LOG_WINDOW", r.DenyLogWindow, 100*time.Millisecond)
	if ap, err := netip.ParseAddrPort(r.SelftestTarget); err != nil {
		bad("SELFTEST_TARGET", fmt.Errorf("%q is not IP:port", r.SelftestTarget))
	} else {
		c.SelftestTarget = ap
	}
	return c, problems
}

// parseGuard parses the HTTP guard's variables into c.Guard.
func parseGuard(c *Config, r *rawConfig, bad func(string, error), boolean func(string, string) bool,
	size func(string, string) units.Size, uint32Of func(string, string, uint64, uint64) uint32, healthPort uint64) {
	g := &c.Guard
	mode, err := guard.ParseMode(r.Guard)
	if err != nil {
		bad("GUARD", err)
	}
	g.Mode = mode
	g.ServerPort = uint16(uint32Of("SERVER_PORT", r.ServerPort, 1, 65535))
	g.GuardPort = uint16(uint32Of("GUARD_PORT", r.GuardPort, 1, 65535))
	if g.GuardPort != 0 && g.GuardPort == g.ServerPort {
		bad("GUARD_PORT", fmt.Errorf("%d must differ from HUBWARDEN_SERVER_PORT", g.GuardPort))
	}
	if g.GuardPort != 0 && uint64(g.GuardPort) == healthPort {
		bad("GUARD_PORT", fmt.Errorf("%d is HUBWARDEN_HEALTH_ADDR's port", g.GuardPort))
	}
	switch {
	case r.ServerBaseURL != "":
		if g.BaseURL, err = guard.EscapeBaseURL(r.ServerBaseURL); err != nil {
			bad("SERVER_BASE_URL", err)
		}
	case c.User != "":
		if g.BaseURL, err = guard.DeriveBaseURL(c.User, c.Server); err != nil {
			bad("SERVER_BASE_URL", fmt.Errorf("empty, and deriving it from HUBWARDEN_USER and HUBWARDEN_SERVER: %w", err))
		}
	case g.Mode != guard.Off && mode != "":
		// Refused here, before anything is detected or applied: the guard
		// cannot route without the server's base URL.
		bad("SERVER_BASE_URL", errors.New("empty, and HUBWARDEN_USER is not set to derive it from: set one of them, or HUBWARDEN_GUARD=off"))
	}
	g.MaxNotebook = int64(size("GUARD_MAX_NOTEBOOK", r.GuardMaxNotebook))
	g.Terminals = boolean("GUARD_TERMINALS", r.GuardTerminals)
	if g.ProxyAllow, err = guard.ParseProxyAllow(r.GuardProxyAllow); err != nil {
		bad("GUARD_PROXY_ALLOW", err)
	}
	g.ProgressInterval = c.ProgressInterval
	if g.BaseURL != "" && g.Mode != guard.Off && g.ProgressInterval > 0 && g.ServerPort != 0 && g.GuardPort != 0 && g.MaxNotebook > 0 {
		// Everything parsed: the guard's own checks (a prefix that would
		// open a route the guard knows, a base URL tornado would read as a
		// pattern).
		if err := g.Validate(); err != nil {
			for _, e := range strings.Split(err.Error(), "\n") {
				name, msg, _ := strings.Cut(e, " ")
				if after, ok := strings.CutPrefix(strings.TrimSuffix(name, ":"), envPrefix+"_"); ok {
					bad(after, errors.New(msg))
				} else {
					bad("GUARD", errors.New(e))
				}
			}
		}
	}
}

// hubEntry turns the hub API URL into an allow entry for its host and port.
func hubEntry(s string) (egress.Entry, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return egress.Entry{}, fmt.Errorf("%q is not an http(s) URL", s)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	host := u.Hostname()
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return egress.ParseEntry("tcp://" + host + ":" + port)
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("%q is not a CIDR", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}

// readResolvConf returns the nameserver addresses of a resolv.conf file.
func readResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "nameserver" {
			out = append(out, strings.SplitN(fs[1], "%", 2)[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no nameserver lines")
	}
	return out, nil
}

// printUsage writes every variable with its default and meaning.
func printUsage(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	err := envconfig.Usagef(envPrefix, &rawConfig{}, tw,
		"{{range .}}{{usage_key .}}\t{{if usage_default .}}{{usage_default .}}{{else}}-{{end}}\t{{usage_description .}}\n{{end}}")
	if err != nil {
		return err
	}
	return tw.Flush()
}

// deprecated are variables an earlier version read that no longer have an
// effect: accepted (a values file that sets them keeps working) and named
// in a warning at start.
var deprecated = map[string]string{
	envPrefix + "_BACKSTOP":        "the tripwire keeps every flow's budget in the kernel; there is no separate backstop",
	envPrefix + "_BACKSTOP_BUDGET": "the tripwire keeps every flow's budget in the kernel; there is no separate backstop",
	envPrefix + "_BACKSTOP_RATE":   "the tripwire keeps every flow's budget in the kernel; there is no separate backstop",
}

// deprecatedSet returns a warning for each deprecated variable set in environ.
func deprecatedSet(environ []string) []string {
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if why, ok := deprecated[k]; ok {
			out = append(out, k+" has no effect any more: "+why)
		}
	}
	sort.Strings(out)
	return out
}
