package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto is the transport protocol an allow entry applies to.
type Proto uint8

// Protocols an entry may name. ProtoAny allows every protocol (and, with no
// ports, every packet) to the destination.
const (
	ProtoAny Proto = iota
	ProtoTCP
	ProtoUDP
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	default:
		return "any"
	}
}

// PortRange is an inclusive range of ports. The zero value means every port.
type PortRange struct{ From, To uint16 }

// All reports whether the range covers every port.
func (r PortRange) All() bool { return r.From == 0 && r.To == 0 }

func (r PortRange) String() string {
	switch {
	case r.All():
		return ""
	case r.From == r.To:
		return strconv.Itoa(int(r.From))
	default:
		return fmt.Sprintf("%d-%d", r.From, r.To)
	}
}

// Entry is one allow-list entry: a destination (an address, a CIDR or a host
// name resolved at run time), optionally narrowed to a protocol and ports.
type Entry struct {
	Prefix netip.Prefix // valid when the entry is an address or CIDR
	Host   string       // set when the entry is a host name
	Proto  Proto
	Ports  PortRange
}

// IsHost reports whether the entry names a host that must be resolved.
func (e Entry) IsHost() bool { return e.Host != "" }

// String prints the entry in the syntax ParseEntry reads.
func (e Entry) String() string {
	var b strings.Builder
	if e.Proto != ProtoAny {
		b.WriteString(e.Proto.String() + "://")
	}
	dst := e.Host
	if !e.IsHost() {
		dst = e.Prefix.String()
		if e.Prefix.IsSingleIP() {
			dst = e.Prefix.Addr().String()
		}
		if e.Prefix.Addr().Is6() && !e.Ports.All() {
			dst = "[" + dst + "]"
		}
	}
	b.WriteString(dst)
	if !e.Ports.All() {
		b.WriteString(":" + e.Ports.String())
	}
	return b.String()
}

// ParseEntry parses one allow-list entry:
//
//	[tcp://|udp://]DEST[:PORT[-PORT]]
//
// DEST is an IPv4 address or CIDR, an IPv6 address or CIDR (in brackets when a
// port follows: "[2001:db8::/32]:443"), or a host name. Ports need a protocol
// or default to tcp. Examples: "198.51.100.0/24", "tcp://pypi.org:443",
// "udp://[2001:db8::1]:123", "db.example.org:5432-5440".
func ParseEntry(s string) (Entry, error) {
	var e Entry
	rest := strings.TrimSpace(s)
	if rest == "" {
		return e, errors.New("empty entry")
	}
	if scheme, r, ok := strings.Cut(rest, "://"); ok {
		switch strings.ToLower(scheme) {
		case "tcp":
			e.Proto = ProtoTCP
		case "udp":
			e.Proto = ProtoUDP
		default:
			return e, fmt.Errorf("entry %q: unknown protocol %q (use tcp:// or udp://)", s, scheme)
		}
		rest = r
	}
	dest, port := rest, ""
	switch {
	case strings.HasPrefix(rest, "["):
		end := strings.Index(rest, "]")
		if end < 0 {
			return e, fmt.Errorf("entry %q: missing ]", s)
		}
		dest = rest[1:end]
		after := rest[end+1:]
		if after != "" {
			p, ok := strings.CutPrefix(after, ":")
			if !ok || p == "" {
				return e, fmt.Errorf("entry %q: expected :PORT after ]", s)
			}
			port = p
		}
	case strings.Count(rest, ":") > 1: // bare IPv6 without a port
	default:
		if d, p, ok := strings.Cut(rest, ":"); ok {
			dest, port = d, p
			if port == "" {
				return e, fmt.Errorf("entry %q: empty port after \":\"", s)
			}
		}
	}
	if err := e.setDest(dest); err != nil {
		return e, fmt.Errorf("entry %q: %w", s, err)
	}
	if port != "" {
		pr, err := ParsePortRange(port)
		if err != nil {
			return e, fmt.Errorf("entry %q: %w", s, err)
		}
		e.Ports = pr
		if e.Proto == ProtoAny {
			e.Proto = ProtoTCP
		}
	}
	return e, nil
}

func (e *Entry) setDest(d string) error {
	if d == "" {
		return errors.New("empty destination")
	}
	if strings.Contains(d, "/") {
		p, err := netip.ParsePrefix(d)
		if err != nil {
			return fmt.Errorf("invalid CIDR %q", d)
		}
		if p.Masked() != p {
			return fmt.Errorf("CIDR %q has host bits set (did you mean %s?)", d, p.Masked())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 { // an IPv4 CIDR in IPv6 clothes
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		e.Prefix = p
		return nil
	}
	if a, err := netip.ParseAddr(d); err == nil {
		if a.Zone() != "" {
			return fmt.Errorf("address %q: zones are not supported", d)
		}
		a = a.Unmap()
		e.Prefix = netip.PrefixFrom(a, a.BitLen())
		return nil
	}
	if err := checkHostname(d); err != nil {
		return err
	}
	e.Host = strings.ToLower(strings.TrimSuffix(d, "."))
	return nil
}

// checkHostname accepts RFC 1123 host names (letters, digits, hyphens, and
// underscores, which some service records use).
func checkHostname(h string) error {
	n := strings.TrimSuffix(h, ".")
	if len(n) == 0 || len(n) > 253 {
		return fmt.Errorf("invalid host name %q: length must be 1-253", h)
	}
	allDigits := true
	for _, label := range strings.Split(n, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("invalid host name %q: empty or over-long label", h)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("invalid host name %q: label %q starts or ends with -", h, label)
		}
		for _, c := range label {
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
				allDigits = false
			default:
				return fmt.Errorf("invalid host name %q: character %q", h, c)
			}
		}
	}
	if allDigits {
		return fmt.Errorf("invalid address %q", h)
	}
	return nil
}

// ParsePortRange parses "443" or "8000-8100".
func ParsePortRange(s string) (PortRange, error) {
	from, to, isRange := strings.Cut(s, "-")
	f, err := parsePort(from)
	if err != nil {
		return PortRange{}, err
	}
	t := f
	if isRange {
		if t, err = parsePort(to); err != nil {
			return PortRange{}, err
		}
		if t < f {
			return PortRange{}, fmt.Errorf("port range %q is reversed", s)
		}
	}
	return PortRange{From: f, To: t}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port %q (want 1-65535)", s)
	}
	return uint16(n), nil
}

// ParseEntries parses a list of entries separated by commas or white space,
// reporting every bad entry, not just the first.
func ParseEntries(s string) ([]Entry, error) {
	var out []Entry
	var errs []error
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
		e, err := ParseEntry(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, e)
	}
	return out, errors.Join(errs...)
}
