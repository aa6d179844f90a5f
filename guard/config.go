package guard

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Mode is HUBWARDEN_GUARD.
type Mode string

// Modes.
const (
	// Enforce decides every request and refuses what the policy denies.
	Enforce Mode = "enforce"
	// Audit decides and logs every request as Enforce does, and refuses
	// nothing: for a rollout, to see what enforce would break.
	Audit Mode = "audit"
	// Off plans no redirect and runs no guard.
	Off Mode = "off"
)

// ParseMode parses HUBWARDEN_GUARD.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case Enforce, Audit, Off:
		return m, nil
	}
	return "", fmt.Errorf("%q is not one of enforce, audit, off", s)
}

// Defaults of the guard's variables.
const (
	DefaultServerPort = 8888 // KubeSpawner's port, z2jh's named port notebook-port
	DefaultGuardPort  = 9281 // next to hubwarden's health port 9280
)

// Config is the guard's validated configuration.
type Config struct {
	Mode        Mode     // HUBWARDEN_GUARD
	ServerPort  uint16   // HUBWARDEN_SERVER_PORT: the single-user server's port, redirected
	GuardPort   uint16   // HUBWARDEN_GUARD_PORT: where the guard listens
	BaseURL     string   // HUBWARDEN_SERVER_BASE_URL, escaped: "/user/jane%20doe/"
	MaxNotebook int64    // HUBWARDEN_GUARD_MAX_NOTEBOOK
	Terminals   bool     // HUBWARDEN_GUARD_TERMINALS
	ProxyAllow  []string // HUBWARDEN_GUARD_PROXY_ALLOW: prefixes under BaseURL, each ending in '/'
	IPv6        bool     // also plan the ip6tables rules
	// ProgressInterval is the rhythm of websocket progress lines
	// (HUBWARDEN_PROGRESS_INTERVAL). The audit lines' user and server come
	// from the logger the guard is given, as on every line of the sidecar.
	ProgressInterval time.Duration
}

// Validate checks the configuration; every error names its variable.
func (c Config) Validate() error {
	var errs []error
	if _, err := ParseMode(string(c.Mode)); err != nil {
		errs = append(errs, fmt.Errorf("HUBWARDEN_GUARD: %w", err))
	}
	if c.Mode == Off {
		return errors.Join(errs...)
	}
	if c.ServerPort == 0 {
		errs = append(errs, errors.New("HUBWARDEN_SERVER_PORT must be 1-65535"))
	}
	if c.GuardPort == 0 {
		errs = append(errs, errors.New("HUBWARDEN_GUARD_PORT must be 1-65535"))
	}
	if c.GuardPort == c.ServerPort {
		errs = append(errs, fmt.Errorf("HUBWARDEN_GUARD_PORT (%d) must differ from HUBWARDEN_SERVER_PORT", c.GuardPort))
	}
	if c.BaseURL == "" {
		errs = append(errs, errors.New("HUBWARDEN_SERVER_BASE_URL is empty and HUBWARDEN_USER is not set to derive it from: set one of them when HUBWARDEN_GUARD is enforce or audit"))
	} else if err := checkEscapedBase(c.BaseURL); err != nil {
		errs = append(errs, fmt.Errorf("HUBWARDEN_SERVER_BASE_URL: %w", err))
	}
	if c.MaxNotebook <= 0 {
		errs = append(errs, errors.New("HUBWARDEN_GUARD_MAX_NOTEBOOK must be > 0"))
	}
	if c.BaseURL != "" && checkEscapedBase(c.BaseURL) == nil {
		for _, p := range c.ProxyAllow {
			if err := checkProxyPrefix(c.BaseURL, p); err != nil {
				errs = append(errs, fmt.Errorf("HUBWARDEN_GUARD_PROXY_ALLOW: %w", err))
			}
		}
	}
	if c.ProgressInterval <= 0 {
		errs = append(errs, errors.New("HUBWARDEN_PROGRESS_INTERVAL must be > 0"))
	}
	return errors.Join(errs...)
}

// EscapeBaseURL turns the server's base URL as JupyterHub builds it before
// escaping ("/user/{unescaped_username}/{unescaped_servername}", as
// KubeSpawner expands its placeholders) into the URL the server serves:
// every segment escaped as JupyterHub escapes user and server names
// (urllib.parse.quote with '@' and '~' safe), empty segments dropped (the
// default server's empty name), a leading and a trailing '/'.
//
// JupyterHub refuses user names with '/', so a segment is never a part of
// a name. A value that is already escaped is escaped again ('%' becomes
// "%25"), as a user name may contain '%'.
func EscapeBaseURL(unescaped string) (string, error) {
	if !strings.HasPrefix(unescaped, "/") {
		return "", fmt.Errorf("%q must start with /", unescaped)
	}
	var b strings.Builder
	b.WriteByte('/')
	n := 0
	for _, seg := range strings.Split(unescaped, "/") {
		if seg == "" {
			continue
		}
		if seg == "." || seg == ".." {
			return "", fmt.Errorf("%q has a . or .. segment", unescaped)
		}
		b.WriteString(escapeSegment(seg))
		b.WriteByte('/')
		n++
	}
	if n == 0 {
		return "", fmt.Errorf("%q has no segment: the guard needs the server's own prefix (\"/user/<name>/\")", unescaped)
	}
	return b.String(), nil
}

// DeriveBaseURL is the base URL JupyterHub gives a server at its default
// prefix: /user/<user>/ or /user/<user>/<server>/, escaped.
func DeriveBaseURL(user, server string) (string, error) {
	if user == "" {
		return "", errors.New("no user name")
	}
	if strings.ContainsRune(user+server, '/') {
		return "", errors.New("a user or server name with '/' (JupyterHub refuses them)")
	}
	return EscapeBaseURL("/user/" + user + "/" + server)
}

// escapeSegment is Python's urllib.parse.quote(s, safe="@~") for one
// segment: letters, digits, "_.-~" and '@' stay, every other byte of the
// UTF-8 encoding becomes %XX with upper-case hex.
func escapeSegment(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isUnreserved(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// isUnreserved reports whether quote(s, safe="@~") keeps c as it is.
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_.-~@", c) >= 0
}

// checkEscapedBase checks an escaped base URL: what EscapeBaseURL returns.
func checkEscapedBase(base string) error {
	if !strings.HasPrefix(base, "/") || !strings.HasSuffix(base, "/") || len(base) < 3 {
		return fmt.Errorf("%q must be a path like /user/name/", base)
	}
	if _, r := ParseTarget(base); r != nil {
		return fmt.Errorf("%q: %s", base, r.Reason)
	}
	// jupyter-server joins the base URL into its route patterns unescaped,
	// so in a pattern '.' matches any character. The guard requires the
	// literal base, which tornado's pattern matches with the same length
	// only when the base holds no other regular-expression syntax.
	for i := 0; i < len(base); i++ {
		c := base[i]
		if !isUnreserved(c) && c != '%' && c != '/' {
			return fmt.Errorf("%q has %q, which JupyterHub escapes", base, c)
		}
	}
	return nil
}

// ParseProxyAllow parses HUBWARDEN_GUARD_PROXY_ALLOW: comma-separated path
// prefixes under the base URL ("proxy/8050/, rstudio/"), each a path of
// whole segments. A missing trailing '/' is added.
func ParseProxyAllow(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		f = strings.TrimPrefix(f, "/")
		if !strings.HasSuffix(f, "/") {
			f += "/"
		}
		if f == "/" {
			return nil, errors.New("an empty prefix would allow everything")
		}
		if _, r := ParseTarget("/" + f); r != nil {
			return nil, fmt.Errorf("%q: %s", f, r.Reason)
		}
		out = append(out, f)
	}
	return out, nil
}

// checkProxyPrefix refuses a prefix that would open a route the guard
// knows: only routes the guard does not know (jupyter-server-proxy's, or
// another extension's) can be allowed by prefix.
func checkProxyPrefix(base, prefix string) error {
	r := NewRouter(base)
	for _, probe := range []string{prefix + "x", prefix, strings.TrimSuffix(prefix, "/")} {
		if m, ok := r.Route(probe); ok && m.Family != FamilyRedirect {
			return fmt.Errorf("%q would allow %s (%s); only addresses hubwarden does not know can be allowed by prefix", prefix, m.Family, m.Handler)
		}
	}
	return nil
}
