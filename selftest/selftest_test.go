package selftest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func readFile(content string, err error) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if p != AccountingPath {
			return nil, fmt.Errorf("unexpected read of %s", p)
		}
		return []byte(content), err
	}
}

func dialErr(err error) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err == nil {
			c1, c2 := net.Pipe()
			c2.Close()
			return c1, nil
		}
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
}

func hang(ctx context.Context, network, addr string) (net.Conn, error) {
	<-ctx.Done()
	return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
}

func TestRun(t *testing.T) {
	ok := func(context.Context) error { return nil }
	target := netip.MustParseAddrPort("198.18.64.2:80")
	tests := []struct {
		name   string
		probes Probes
		want   []Check // Reason compared by prefix
	}{
		{"all pass", Probes{ReadFile: readFile("1\n", nil), HTBClasses: ok, Chains: ok, Dial: dialErr(syscall.ECONNREFUSED)},
			[]Check{{Name: CheckAccounting, Passed: true}, {Name: CheckHTB, Passed: true}, {Name: CheckChains, Passed: true},
				{Name: CheckBlocked, Passed: true, Reason: "198.18.64.2:80 refused in"}}},
		{"nil probes skip", Probes{Dial: dialErr(syscall.EHOSTUNREACH)},
			[]Check{{Name: CheckBlocked, Passed: true, Reason: "198.18.64.2:80 refused in"}}},
		{"accounting off", Probes{ReadFile: readFile("0\n", nil)},
			[]Check{{Name: CheckAccounting, Reason: `/proc/sys/net/netfilter/nf_conntrack_acct is "0", want 1`}}},
		{"accounting unreadable", Probes{ReadFile: readFile("", fs.ErrNotExist)},
			[]Check{{Name: CheckAccounting, Reason: "reading /proc/sys/net/netfilter/nf_conntrack_acct: file does not exist"}}},
		{"classes missing", Probes{HTBClasses: func(context.Context) error { return errors.New("class 1:20 missing on eth0") }},
			[]Check{{Name: CheckHTB, Reason: "class 1:20 missing on eth0"}}},
		{"chains missing", Probes{Chains: func(context.Context) error { return errors.New("chain HUBWARDEN-EGRESS missing (ip6tables-nft)") }},
			[]Check{{Name: CheckChains, Reason: "chain HUBWARDEN-EGRESS missing"}}},
		{"target connects", Probes{Dial: dialErr(nil)},
			[]Check{{Name: CheckBlocked, Reason: "connecting to 198.18.64.2:80: connected: not blocked"}}},
		{"target hangs (DROP)", Probes{Dial: hang},
			[]Check{{Name: CheckBlocked, Reason: "connecting to 198.18.64.2:80: no answer in"}}},
		{"guard answers", Probes{GuardRedirect: ok},
			[]Check{{Name: CheckGuard, Passed: true}}},
		{"guard not reached", Probes{GuardRedirect: func(context.Context) error { return errors.New("the server answered, not the guard") }},
			[]Check{{Name: CheckGuard, Reason: "the server answered, not the guard"}}},
		{"odd error", Probes{Dial: dialErr(syscall.EADDRNOTAVAIL)},
			[]Check{{Name: CheckBlocked, Reason: "connecting to 198.18.64.2:80: dial tcp: cannot assign requested address (not a refusal)"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Run(context.Background(), Options{Target: target, Timeout: 50 * time.Millisecond}, tt.probes)
			got := r.Checks
			for i := range got {
				if i < len(tt.want) && strings.HasPrefix(got[i].Reason, tt.want[i].Reason) {
					got[i].Reason = tt.want[i].Reason
				}
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Check{}, "Duration")); diff != "" {
				t.Errorf("checks mismatch (-want +got):\n%s", diff)
			}
			wantOK := true
			for _, c := range tt.want {
				wantOK = wantOK && c.Passed
			}
			if r.OK() != wantOK || (r.Err() == nil) != wantOK {
				t.Errorf("OK %v Err %v, want ok=%v", r.OK(), r.Err(), wantOK)
			}
			if len(r.Health()) != len(got) {
				t.Errorf("Health has %d checks, want %d", len(r.Health()), len(got))
			}
		})
	}
}

func TestResultWriteAndErr(t *testing.T) {
	r := Result{Checks: []Check{{Name: "a", Passed: true}, {Name: "b", Reason: "gone"}}}
	var b strings.Builder
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("PASS a\nFAIL b: gone\n", b.String()); diff != "" {
		t.Errorf("Write (-want +got):\n%s", diff)
	}
	if got := r.Err().Error(); got != "self-test failed: b: gone" {
		t.Errorf("Err = %q", got)
	}
}

// TestDialBlockedLoopback uses real sockets on loopback: an open port is
// "not blocked", a closed one is refused.
func TestDialBlockedLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var d net.Dialer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := DialBlocked(ctx, d.DialContext, "tcp", ln.Addr().String()); !errors.Is(err, ErrNotBlocked) {
		t.Errorf("open port: %v, want ErrNotBlocked", err)
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	if note, err := DialBlocked(ctx, d.DialContext, "tcp", addr); err != nil || !strings.Contains(note, "connection refused") {
		t.Errorf("closed port: %q %v, want refused", note, err)
	}
}
