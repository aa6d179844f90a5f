package guard

import (
	"net/netip"
	"strings"
)

// Audit field names. They are a stable interface for log shippers; see
// docs/audit.md before changing one. user and server come from the logger
// the sidecar passes (HUBWARDEN_USER, HUBWARDEN_SERVER), as on the
// watcher's lines.
const (
	FieldAudit        = "audit"         // http, websocket, websocket_progress
	FieldMethod       = "method"        // the request method
	FieldPath         = "path"          // the request target with secret query parameters removed
	FieldStatus       = "status"        // the status the client got (101 for a websocket)
	FieldBytes        = "bytes"         // response body bytes sent to the client
	FieldRequestBytes = "request_bytes" // request body bytes passed to the server
	FieldDuration     = "duration_s"    // from the request's headers to the end of the answer (of the websocket)
	FieldDecision     = "decision"      // allow, deny
	FieldEnforced     = "enforced"      // false in audit mode: a deny was logged, not applied
	FieldRule         = "rule"          // the rule that decided
	FieldFamily       = "family"        // the route family
	FieldID           = "id"            // kernel id, terminal name, language server, or the contents path (decoded)
	FieldPeer         = "peer"          // the TCP peer: the hub's proxy or the hub (cannot be forged)
	FieldForwardedFor = "forwarded_for" // the last X-Forwarded-For hop as received: the browser's address, as the hub's proxy reports it
	FieldToClient     = "bytes_to_client"
	FieldToServer     = "bytes_to_server"
	FieldAborted      = "aborted" // true: the guard cut the answer off mid-way (a check failed after the headers went out)
	FieldWithheld     = "withheld"
	FieldUpstreamErr  = "error"
)

// Audit kinds.
const (
	AuditHTTP       = "http"
	AuditWebsocket  = "websocket"
	AuditWSProgress = "websocket_progress"
)

// secretParam reports whether a query parameter is one the audit never
// writes: the names JupyterHub's own log scrubbing masks (jupyterhub/log.py
// _scrub_uri: any name containing token, auth, key, code, state or _xsrf).
func secretParam(name string) bool {
	n := strings.ToLower(Unquote(strings.ReplaceAll(name, "+", " ")))
	for _, s := range []string{"token", "auth", "key", "code", "state", "_xsrf"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// ScrubTarget returns a request target for the audit: the path as
// received, and the query without the parameters that carry secrets
// (token, _xsrf, OAuth's code and state, ...).
func ScrubTarget(target string) string {
	p, q, ok := strings.Cut(target, "?")
	if !ok {
		return target
	}
	var kept []string
	for _, nv := range strings.Split(q, "&") {
		n, _, _ := strings.Cut(nv, "=")
		if nv == "" || secretParam(n) {
			continue
		}
		kept = append(kept, nv)
	}
	if len(kept) == 0 {
		return p
	}
	return p + "?" + strings.Join(kept, "&")
}

// lastForwardedFor returns the address tornado takes from X-Forwarded-For
// (the last hop: jupyter-server trusts no downstream proxies) when it is an
// IP address.
func lastForwardedFor(values []string) (netip.Addr, bool) {
	if len(values) == 0 {
		return netip.Addr{}, false
	}
	all := strings.Join(values, ",")
	last := strings.TrimSpace(all[strings.LastIndexByte(all, ',')+1:])
	a, err := netip.ParseAddr(last)
	if err != nil {
		return netip.Addr{}, false
	}
	return a, true
}
