//go:build linux

package verify

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/hubwarden/hubwarden/nflog"
)

var errEPERM error = unix.EPERM

// probeNFLOGGroup is an NFLOG group hubwarden never uses: unbinding it is
// harmless even when permitted (the kernel answers ENODEV).
const probeNFLOGGroup = 65534

// kernelProbes asks the kernel for two harmless changes that it refuses with
// EPERM to a process without CAP_NET_ADMIN in the pod's network namespace:
// deleting a qdisc that does not exist (rtnetlink: tc) and unbinding an
// NFLOG group nobody uses (nfnetlink: iptables, nftables and conntrack go
// through the same permission check).
func kernelProbes(ctx context.Context) []KernelProbe {
	return []KernelProbe{
		{Name: "tc-change-denied", Err: tcProbe()},
		{Name: "netfilter-change-denied", Err: netfilterProbe()},
	}
}

func tcProbe() error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return fmt.Errorf("opening rtnetlink: %w", err)
	}
	defer c.Close()
	// struct tcmsg: family, 3 pad, ifindex, handle, parent, info.
	tcm := make([]byte, 20)
	binary.NativeEndian.PutUint32(tcm[4:8], 1)            // lo
	binary.NativeEndian.PutUint32(tcm[8:12], 0xfffe0000)  // handle fffe: (nobody's)
	binary.NativeEndian.PutUint32(tcm[12:16], 0xffffffff) // TC_H_ROOT
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_DELQDISC, Flags: netlink.Request | netlink.Acknowledge},
		Data:   tcm,
	})
	return err
}

func netfilterProbe() error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("opening nfnetlink: %w", err)
	}
	defer c.Close()
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nflog.ConfigMsgType), Flags: netlink.Request | netlink.Acknowledge},
		Data:   nflog.UnbindMessage(probeNFLOGGroup),
	})
	return err
}
