// Package resolve resolves the host names of the egress allow-list to their
// IPv4 and IPv6 addresses with the records' TTLs, and keeps the answers
// current (Refresher), so that the egress rules follow DNS.
//
// Go's net.Resolver hides TTLs, so this is a small stub resolver on
// golang.org/x/net/dns/dnsmessage: UDP with EDNS(0), TCP when the answer is
// truncated, the configured resolvers in order, CNAME chains followed, and
// the resolv.conf search list applied (z2jh's hub API is the short name
// "hub"). It asks the same resolvers, under the same rate limit, as the pod.
package resolve

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// ErrNoAnswer is returned (wrapped) when no resolver gave a usable answer.
var ErrNoAnswer = errors.New("no usable answer")

// PartialError reports that one family's query failed while the other's
// succeeded: Lookup returns the addresses of the family that answered, and
// the caller keeps its last good addresses of the family that did not.
type PartialError struct {
	Failed int // 4 or 6
	Err    error
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("IPv%d query failed: %v", e.Failed, e.Err)
}

func (e *PartialError) Unwrap() error { return e.Err }

// DefaultTimeout bounds one exchange with one resolver.
const DefaultTimeout = 2 * time.Second

// maxCNAMEHops bounds CNAME chains (glibc follows up to 16; real chains are short).
const maxCNAMEHops = 8

// ednsSize is the UDP payload size we advertise (the DNS flag day 2020 value).
const ednsSize = 1232

// DialFunc opens a connection to a resolver; net.Dialer.DialContext is one.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Resolver looks host names up at the configured resolvers.
type Resolver struct {
	// Servers are the resolvers, asked in order until one answers.
	Servers []netip.AddrPort
	// Search and Ndots are resolv.conf's search list and ndots option: a
	// name with fewer than Ndots dots is tried with each search suffix
	// first, then as is. Ndots is capped at 1: allow-list names are written
	// fully qualified ("pypi.org"), and Kubernetes' ndots:5 would spend four
	// wasted queries per name and type of the pod's rate-limited DNS budget
	// before asking for the name itself. A name without dots ("hub") still
	// goes through the search list first.
	Search []string
	Ndots  int
	// Timeout bounds one exchange with one resolver (DefaultTimeout when 0).
	Timeout time.Duration
	// Dial opens connections to resolvers (net.Dialer when nil).
	Dial DialFunc
}

// New returns a Resolver that asks servers on port 53, with resolv.conf's
// default ndots of 1 and no search list.
func New(servers []netip.Addr) *Resolver {
	r := &Resolver{Ndots: 1}
	for _, s := range servers {
		r.Servers = append(r.Servers, netip.AddrPortFrom(s.Unmap(), 53))
	}
	return r
}

// answer is what one query yielded.
type answer struct {
	addrs  []netip.Addr
	ttl    time.Duration
	hasTTL bool   // false when nothing in the answer bounds its lifetime
	next   string // CNAME target still to resolve, when the answer stopped there
	nx     bool   // NXDOMAIN
}

// Lookup returns the IPv4 and IPv6 addresses of host (sorted, without
// duplicates) and how long the answer may be cached: the smallest TTL of the
// records used, including the CNAMEs on the way, or the negative-caching TTL
// of an empty answer. A name that does not exist, or has no addresses, gives
// no addresses and no error; an error means no resolver answered usably, and
// the caller should keep its last good answer. When only one family's query
// failed, Lookup returns the other family's addresses with a *PartialError.
func (r *Resolver) Lookup(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" {
		return nil, 0, errors.New("looking up an empty host name")
	}
	if len(r.Servers) == 0 {
		return nil, 0, fmt.Errorf("looking up %s: no resolvers configured", host)
	}
	var errs []error
	var ttl time.Duration
	hasTTL := false
	for _, name := range r.candidates(host) {
		var addrs []netip.Addr
		var partial *PartialError
		for _, t := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
			a, err := r.resolve(ctx, name, t)
			if err != nil {
				errs = append(errs, err)
				partial = &PartialError{Failed: 4, Err: fmt.Errorf("looking up %s: %w: %w", host, ErrNoAnswer, err)}
				if t == dnsmessage.TypeAAAA {
					partial.Failed = 6
				}
				continue
			}
			addrs = append(addrs, a.addrs...)
			if a.hasTTL && (!hasTTL || a.ttl < ttl) {
				ttl, hasTTL = a.ttl, true
			}
		}
		if len(addrs) > 0 {
			slices.SortFunc(addrs, netip.Addr.Compare)
			addrs = slices.Compact(addrs)
			if partial != nil {
				// Returning one family as the whole answer would drop the
				// other family's rules on a transient failure.
				return addrs, ttl, partial
			}
			return addrs, ttl, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) > 0 {
		return nil, 0, fmt.Errorf("looking up %s: %w: %w", host, ErrNoAnswer, errors.Join(errs...))
	}
	return nil, ttl, nil
}

// candidates applies the search list the way glibc does.
func (r *Resolver) candidates(host string) []string {
	var searched []string
	for _, s := range r.Search {
		s = strings.Trim(strings.ToLower(s), ".")
		if s != "" {
			searched = append(searched, host+"."+s)
		}
	}
	if strings.Count(host, ".") >= min(r.Ndots, 1) {
		return append([]string{host}, searched...)
	}
	return append(searched, host)
}

// resolve queries name for one type, following a CNAME chain the answer
// leaves unfinished.
func (r *Resolver) resolve(ctx context.Context, name string, t dnsmessage.Type) (answer, error) {
	var out answer
	for range maxCNAMEHops {
		a, err := r.query(ctx, name, t)
		if err != nil {
			return answer{}, err
		}
		if a.hasTTL && (!out.hasTTL || a.ttl < out.ttl) {
			out.ttl, out.hasTTL = a.ttl, true
		}
		if a.next == "" {
			out.addrs, out.nx = a.addrs, a.nx
			return out, nil
		}
		name = a.next
	}
	return answer{}, fmt.Errorf("resolving %s %s: CNAME chain longer than %d", name, t, maxCNAMEHops)
}

// query asks the resolvers in order until one answers.
func (r *Resolver) query(ctx context.Context, name string, t dnsmessage.Type) (answer, error) {
	var errs []error
	for _, s := range r.Servers {
		a, err := r.exchange(ctx, s, name, t)
		if err == nil {
			return a, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return answer{}, errors.Join(errs...)
}

// exchange sends one query to one server, over TCP if UDP's answer is truncated.
func (r *Resolver) exchange(ctx context.Context, server netip.AddrPort, name string, t dnsmessage.Type) (answer, error) {
	q, id, err := buildQuery(name, t)
	if err != nil {
		return answer{}, fmt.Errorf("building query for %s %s: %w", name, t, err)
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	for _, network := range []string{"udp", "tcp"} {
		resp, err := r.roundTrip(ctx, network, server, q, id, timeout)
		if err != nil {
			return answer{}, fmt.Errorf("querying %s for %s %s over %s: %w", server, name, t, network, err)
		}
		a, truncated, err := parseResponse(resp, id, name, t)
		if err != nil {
			return answer{}, fmt.Errorf("querying %s for %s %s over %s: %w", server, name, t, network, err)
		}
		if !truncated || network == "tcp" {
			return a, nil
		}
	}
	return answer{}, fmt.Errorf("querying %s for %s %s: truncated over tcp", server, name, t)
}

func (r *Resolver) roundTrip(ctx context.Context, network string, server netip.AddrPort, q []byte, id uint16, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := r.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, network, server.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(d); err != nil {
			return nil, err
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if network == "tcp" {
		msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
		if _, err := c.Write(append(msg, q...)); err != nil {
			return nil, err
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return nil, err
		}
		resp := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, resp); err != nil {
			return nil, err
		}
		return resp, nil
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		// A connected UDP socket only hears the server; skip stale answers
		// to earlier queries.
		if n >= 2 && binary.BigEndian.Uint16(buf) == id {
			return buf[:n], nil
		}
	}
}

func buildQuery(name string, t dnsmessage.Type) ([]byte, uint16, error) {
	n, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, 0, err
	}
	id := uint16(rand.Uint32())
	var opt dnsmessage.ResourceHeader
	if err := opt.SetEDNS0(ednsSize, dnsmessage.RCodeSuccess, false); err != nil {
		return nil, 0, err
	}
	m := dnsmessage.Message{
		Header:      dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions:   []dnsmessage.Question{{Name: n, Type: t, Class: dnsmessage.ClassINET}},
		Additionals: []dnsmessage.Resource{{Header: opt, Body: &dnsmessage.OPTResource{}}},
	}
	b, err := m.Pack()
	return b, id, err
}

// parseResponse checks that resp answers the query (id, name, type) and
// extracts the addresses for name, following the CNAME chain inside it.
func parseResponse(resp []byte, id uint16, name string, t dnsmessage.Type) (answer, bool, error) {
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		return answer{}, false, fmt.Errorf("parsing answer: %w", err)
	}
	if !m.Response || m.ID != id {
		return answer{}, false, errors.New("answer does not match the query id")
	}
	if len(m.Questions) != 1 || !sameName(m.Questions[0].Name, name) || m.Questions[0].Type != t || m.Questions[0].Class != dnsmessage.ClassINET {
		return answer{}, false, errors.New("answer is for another question")
	}
	if m.Truncated {
		return answer{}, true, nil
	}
	var a answer
	switch m.RCode {
	case dnsmessage.RCodeSuccess:
	case dnsmessage.RCodeNameError:
		a.nx = true
	default:
		return answer{}, false, fmt.Errorf("server answered %s", m.RCode)
	}
	minTTL := func(sec uint32) {
		d := time.Duration(sec) * time.Second
		if !a.hasTTL || d < a.ttl {
			a.ttl, a.hasTTL = d, true
		}
	}
	cur := name
	for hops := 0; ; hops++ {
		next := ""
		for _, rr := range m.Answers {
			if c, ok := rr.Body.(*dnsmessage.CNAMEResource); ok && sameName(rr.Header.Name, cur) {
				next = strings.TrimSuffix(strings.ToLower(c.CNAME.String()), ".")
				minTTL(rr.Header.TTL)
				break
			}
		}
		if next == "" || next == cur {
			break
		}
		if hops == maxCNAMEHops {
			return answer{}, false, fmt.Errorf("CNAME chain longer than %d", maxCNAMEHops)
		}
		cur = next
	}
	for _, rr := range m.Answers {
		if !sameName(rr.Header.Name, cur) || rr.Header.Class != dnsmessage.ClassINET {
			continue
		}
		switch b := rr.Body.(type) {
		case *dnsmessage.AResource:
			if t == dnsmessage.TypeA {
				a.addrs = append(a.addrs, netip.AddrFrom4(b.A))
				minTTL(rr.Header.TTL)
			}
		case *dnsmessage.AAAAResource:
			if t == dnsmessage.TypeAAAA {
				a.addrs = append(a.addrs, netip.AddrFrom16(b.AAAA).Unmap())
				minTTL(rr.Header.TTL)
			}
		}
	}
	if len(a.addrs) == 0 {
		if cur != name && !a.nx && !hasSOA(m) {
			a.next = cur // the chain goes on outside this answer
		}
		for _, rr := range m.Authorities {
			if soa, ok := rr.Body.(*dnsmessage.SOAResource); ok {
				minTTL(min(rr.Header.TTL, soa.MinTTL)) // RFC 2308 negative caching
			}
		}
	}
	return a, false, nil
}

func hasSOA(m dnsmessage.Message) bool {
	return slices.ContainsFunc(m.Authorities, func(rr dnsmessage.Resource) bool { return rr.Header.Type == dnsmessage.TypeSOA })
}

func sameName(n dnsmessage.Name, s string) bool {
	return strings.EqualFold(strings.TrimSuffix(n.String(), "."), s)
}
