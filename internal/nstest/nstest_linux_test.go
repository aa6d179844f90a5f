//go:build linux

package nstest

import (
	"net"
	"os/exec"
	"strings"
	"testing"
)

func TestIntegrationPair(t *testing.T) {
	p := NewPair(t, 250)
	var ln net.Listener
	if err := p.Peer.Do(func() (err error) {
		ln, err = net.Listen("tcp", "[::]:7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	for _, addr := range []string{p.PeerIP4 + ":7000", "[" + p.PeerIP6 + "]:7000"} {
		if err := p.Pod.Do(func() error {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			t.Fatalf("dialling %s from the pod: %v", addr, err)
		}
	}
	var inside string
	if err := p.Pod.Do(func() error {
		out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
		inside = string(out)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(inside, "eth0") || strings.Count(inside, "\n") != 2 {
		t.Fatalf("Do did not run inside the namespace (want lo and eth0 only): %q", inside)
	}
}
