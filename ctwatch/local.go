package ctwatch

import (
	"fmt"
	"net"
	"net/netip"
)

// LocalAddrs returns the addresses of every interface of the network
// namespace the process runs in (the sidecar shares the pod's), for
// Config.LocalAddrs.
func LocalAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("listing the pod's addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}
