package resolve

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Conf is the part of resolv.conf the stub resolver needs.
type Conf struct {
	Servers []netip.Addr
	Search  []string
	Ndots   int
}

// ParseResolvConf reads resolv.conf: nameserver, search (the last one wins,
// as in glibc), domain (a one-entry search list) and options ndots:N (capped
// at 15, as in glibc). Unknown lines are ignored. Ndots defaults to 1.
func ParseResolvConf(r io.Reader) (Conf, error) {
	c := Conf{Ndots: 1}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			host, _, _ := strings.Cut(f[1], "%") // drop a zone
			if a, err := netip.ParseAddr(host); err == nil {
				c.Servers = append(c.Servers, a.Unmap())
			}
		case "search":
			c.Search = append([]string(nil), f[1:]...)
		case "domain":
			c.Search = []string{f[1]}
		case "options":
			for _, o := range f[1:] {
				if v, ok := strings.CutPrefix(o, "ndots:"); ok {
					if n, err := strconv.Atoi(v); err == nil && n >= 0 {
						c.Ndots = min(n, 15)
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Conf{}, fmt.Errorf("reading resolv.conf: %w", err)
	}
	return c, nil
}
