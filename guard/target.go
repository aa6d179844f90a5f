package guard

import (
	"strings"
	"unicode/utf8"
)

// Target is an HTTP request-target split the way tornado 6.5 splits it
// (httputil.HTTPServerRequest: uri.partition("?")). Path and Query stay
// exactly as received, still percent-encoded: tornado routes on the raw path
// and decodes only the groups a route captures.
type Target struct {
	Path     string // everything before the first '?'
	Query    string // everything after it
	HasQuery bool   // the target contains '?', even with an empty query
}

// String returns the target exactly as received.
func (t Target) String() string {
	if t.HasQuery {
		return t.Path + "?" + t.Query
	}
	return t.Path
}

// Refusal is why the guard refuses a request before routing it: the request
// is malformed or ambiguous (some layer between the client and the files
// could read it differently), or it is outside what the server serves here.
type Refusal struct {
	Rule   string // stable rule name, written on the audit line
	Reason string // short text for the client and the log
}

func (r *Refusal) Error() string { return r.Rule + ": " + r.Reason }

func refuse(rule, reason string) *Refusal { return &Refusal{Rule: rule, Reason: reason} }

// ParseTarget splits a raw request-target and refuses every form that the
// guard does not decide on, because it is not the origin-form browsers and
// the hub's proxy send, or because a layer could interpret it differently
// from tornado:
//
//   - anything but origin-form ("/path?query"): absolute-form
//     ("http://host/path"), authority-form and "*";
//   - bytes outside printable ASCII (tornado accepts obs-text and routes it
//     through Unicode-aware regexes; browsers percent-encode it);
//   - '#' (a fragment is never sent), '\' (some stacks treat it as '/');
//   - in the path: a malformed percent-escape, an empty segment ("//"), a
//     "." or ".." segment (raw or percent-encoded), an encoded '/' or '\',
//     an encoded control character, a raw ';' (path parameters elsewhere),
//     and an escape that survives one decoding ("%252e"), since a second
//     decoding somewhere would change the path.
func ParseTarget(raw string) (Target, *Refusal) {
	if raw == "" || raw[0] != '/' {
		return Target{}, refuse("deny-target-form", "only origin-form request targets (/path?query) are served")
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c < 0x21 || c > 0x7e {
			return Target{}, refuse("deny-target-bytes", "the request target has a byte outside printable ASCII")
		}
		if c == '#' || c == '\\' {
			return Target{}, refuse("deny-target-bytes", "the request target has a '#' or '\\'")
		}
	}
	var t Target
	t.Path, t.Query, t.HasQuery = strings.Cut(raw, "?")
	if r := checkPath(t.Path); r != nil {
		return Target{}, r
	}
	return t, nil
}

// checkPath applies the path rules of ParseTarget to a raw path that starts
// with '/' and holds only printable ASCII.
func checkPath(p string) *Refusal {
	if strings.ContainsRune(p, ';') {
		return refuse("deny-path-params", "the path has a ';'")
	}
	// Segments after the leading '/'; the last one is empty for a trailing '/'.
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		if s == "" && i != len(segs)-1 {
			return refuse("deny-path-empty-segment", "the path has an empty segment (//)")
		}
		d, ok := unescapeStrict(s)
		if !ok {
			return refuse("deny-path-escape", "the path has a malformed percent-escape")
		}
		if d == "." || d == ".." {
			return refuse("deny-path-dot-segment", "the path has a . or .. segment")
		}
		for j := 0; j < len(d); j++ {
			c := d[j]
			if c == '/' || c == '\\' || c < 0x20 || c == 0x7f {
				return refuse("deny-path-encoded-separator", "the path encodes a '/', '\\' or a control character")
			}
		}
		if hasEscape(d) {
			return refuse("deny-path-double-encoding", "the path is percent-encoded twice")
		}
	}
	return nil
}

// isHex reports whether c is a hexadecimal digit.
func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// hasEscape reports whether s contains a well-formed percent-escape.
func hasEscape(s string) bool {
	for i := 0; i+2 < len(s); i++ {
		if s[i] == '%' && isHex(s[i+1]) && isHex(s[i+2]) {
			return true
		}
	}
	return false
}

// unescapeStrict percent-decodes s and reports false when an escape is
// malformed.
func unescapeStrict(s string) (string, bool) {
	if strings.IndexByte(s, '%') < 0 {
		return s, true
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", false
		}
		b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
		i += 2
	}
	return string(b), true
}

// Unquote percent-decodes s as Python's urllib.parse.unquote_to_bytes does,
// which tornado applies to every group a route captures
// (routing._unquote_or_none): a well-formed escape becomes its byte, and a
// '%' not followed by two hexadecimal digits stays as it is. '+' is not a
// space here.
func Unquote(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

// Query is a query string parsed as tornado parses it for
// RequestHandler.get_query_argument: urllib.parse.parse_qs with
// keep_blank_values, '&' as the only separator, '+' as a space, names and
// values percent-decoded as Latin-1 bytes.
type Query struct {
	names  []string
	values []string
}

// ParseQuery parses a raw query string.
func ParseQuery(raw string) Query {
	var q Query
	for _, nv := range strings.Split(raw, "&") {
		if nv == "" {
			continue
		}
		n, v, _ := strings.Cut(nv, "=")
		q.names = append(q.names, Unquote(strings.ReplaceAll(n, "+", " ")))
		q.values = append(q.values, Unquote(strings.ReplaceAll(v, "+", " ")))
	}
	return q
}

// Argument returns what tornado's get_query_argument(name) returns: the
// last value given for name, decoded as UTF-8, with the control characters
// tornado removes replaced by spaces and surrounding white space stripped.
// present is false when the query does not name it; valid is false when the
// value is not UTF-8 (tornado answers 400).
func (q Query) Argument(name string) (value string, present, valid bool) {
	for i := len(q.names) - 1; i >= 0; i-- {
		if q.names[i] != name {
			continue
		}
		v := q.values[i]
		if !utf8.ValidString(v) {
			return "", true, false
		}
		return pythonStrip(removeControl(v)), true, true
	}
	return "", false, true
}

// Names returns every name in the query, in order, repeated names included.
func (q Query) Names() []string { return q.names }

// removeControl replaces what tornado's RequestHandler._remove_control_chars_regex
// matches, [\x00-\x08\x0e-\x1f], with a space.
func removeControl(s string) string {
	if strings.IndexFunc(s, isRemovedControl) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isRemovedControl(r) {
			return ' '
		}
		return r
	}, s)
}

func isRemovedControl(r rune) bool { return r <= 0x08 || 0x0e <= r && r <= 0x1f }

// pythonStrip strips what Python's str.strip() strips: the characters for
// which str.isspace() is true.
func pythonStrip(s string) string {
	return strings.TrimFunc(s, pythonSpace)
}

// pythonSpace is Python 3.11's str.isspace: Unicode White_Space plus the
// information separators U+001C-U+001F.
func pythonSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0, 0x1680,
		0x2028, 0x2029, 0x202f, 0x205f, 0x3000:
		return true
	}
	return 0x2000 <= r && r <= 0x200a
}
