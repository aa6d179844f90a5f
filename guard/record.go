package guard

import (
	"net/http"

	"github.com/rs/zerolog"
)

// finish writes the request's audit line and counts it in the metrics.
func (g *Guard) finish(x *exchange, cw *countingWriter) {
	rule := x.d.Rule
	denied := !x.d.Allow
	if x.respRule != "" {
		rule, denied = x.respRule, true
	}
	decision := LabelAllow
	if denied {
		decision = LabelDeny
		if g.cfg.Mode != Enforce {
			decision = LabelWouldDeny
		}
	}
	fam := string(x.d.Family)
	g.m.requests.WithLabelValues(decision, fam).Inc()
	g.m.responseBytes.WithLabelValues(decision, fam).Add(float64(cw.n))
	if n := x.reqBytes.Load(); n > 0 {
		g.m.requestBytes.WithLabelValues(fam).Add(float64(n))
	}
	if x.aborted.Load() {
		g.m.errors.WithLabelValues(ErrAborted).Inc()
	}
	kind := AuditHTTP
	if x.upgrade {
		// The proxy wrote the 101 on the hijacked connection.
		cw.status = http.StatusSwitchingProtocols
		kind = AuditWebsocket
		g.mu.Lock()
		delete(g.sockets, x)
		g.mu.Unlock()
		g.m.wsOpen.WithLabelValues(fam).Dec()
		g.countWebsocket(x)
	}
	ev := g.log.Info()
	if denied {
		ev = g.log.Warn()
	}
	ev = g.common(ev, x, kind).
		Int(FieldStatus, cw.status).
		Str(FieldDecision, map[bool]string{true: LabelDeny, false: LabelAllow}[denied]).
		Str(FieldRule, rule)
	if denied {
		ev = ev.Bool(FieldEnforced, g.cfg.Mode == Enforce)
	}
	if x.upgrade {
		ev = ev.Int64(FieldToClient, x.toClient.Load()).Int64(FieldToServer, x.toServer.Load())
	} else {
		ev = ev.Int64(FieldBytes, cw.n).Int64(FieldRequestBytes, x.reqBytes.Load())
	}
	if x.aborted.Load() {
		ev = ev.Bool(FieldAborted, true)
	}
	if x.withheld {
		ev = ev.Bool(FieldWithheld, true)
	}
	if x.upErr != nil {
		ev = ev.Str(FieldUpstreamErr, x.upErr.Error())
	}
	ev.Float64(FieldDuration, g.opts.Now().Sub(x.start).Seconds()).Msg(auditMessage(kind, denied))
}

// common adds the fields every audit line of a request has.
func (g *Guard) common(ev *zerolog.Event, x *exchange, kind string) *zerolog.Event {
	ev = ev.Str(FieldAudit, kind).
		Str(FieldMethod, x.req.Method).
		Str(FieldPath, ScrubTarget(x.req.Target)).
		Str(FieldFamily, string(x.d.Family))
	if x.d.ID != "" {
		ev = ev.Str(FieldID, x.d.ID)
	}
	if x.peer.IsValid() {
		ev = ev.Str(FieldPeer, x.peer.String())
	}
	if a, ok := lastForwardedFor(x.fwdFor); ok {
		ev = ev.Str(FieldForwardedFor, a.String())
	}
	return ev
}

func auditMessage(kind string, denied bool) string {
	switch {
	case kind == AuditWebsocket:
		return "websocket closed"
	case denied:
		return "request denied"
	}
	return "request"
}

// countWebsocket adds a websocket's bytes since the last count to the metrics.
func (g *Guard) countWebsocket(x *exchange) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fam := string(x.d.Family)
	tc, ts := x.toClient.Load(), x.toServer.Load()
	g.m.wsBytes.WithLabelValues(fam, "to_client").Add(float64(tc - x.lastToClient))
	g.m.wsBytes.WithLabelValues(fam, "to_server").Add(float64(ts - x.lastToServer))
	x.lastToClient, x.lastToServer = tc, ts
}

// progress writes a progress line for every open websocket that moved
// bytes since its last line, and counts them.
func (g *Guard) progress() {
	g.mu.Lock()
	open := make([]*exchange, 0, len(g.sockets))
	for x := range g.sockets {
		open = append(open, x)
	}
	g.mu.Unlock()
	for _, x := range open {
		g.mu.Lock()
		moved := x.toClient.Load() != x.lastToClient || x.toServer.Load() != x.lastToServer
		g.mu.Unlock()
		if !moved {
			continue
		}
		g.countWebsocket(x)
		g.common(g.log.Info(), x, AuditWSProgress).
			Int64(FieldToClient, x.toClient.Load()).
			Int64(FieldToServer, x.toServer.Load()).
			Float64(FieldDuration, g.opts.Now().Sub(x.start).Seconds()).
			Msg("websocket progress")
	}
}

// closeSockets closes every open websocket (at shutdown: http.Server's
// Shutdown does not know hijacked connections).
func (g *Guard) closeSockets() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for x := range g.sockets {
		if x.backend != nil {
			_ = x.backend.Close()
		}
	}
}
