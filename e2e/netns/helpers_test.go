//go:build linux

package netns

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseTCRate(t *testing.T) {
	tests := map[string]float64{"1Mbit": 1e6, "10Gbit": 1e10, "800Kbit": 8e5, "96bit": 96}
	for in, want := range tests {
		if got := parseTCRate(in); got != want {
			t.Errorf("parseTCRate(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestSentRE(t *testing.T) {
	out := `class htb 1:1 root rate 10Gbit ceil 10Gbit burst 1Mb cburst 1Mb
 Sent 123 bytes 4 pkt (dropped 0, overlimits 0 requeues 0)
class htb 1:10 parent 1:1 prio 0 rate 10Gbit ceil 10Gbit burst 1Mb cburst 1Mb
 Sent 100 bytes 2 pkt (dropped 0, overlimits 0 requeues 0)
class htb 1:20 parent 1:1 leaf 20: prio 1 rate 1Mbit ceil 1Mbit burst 15Kb cburst 15Kb
 Sent 23 bytes 2 pkt (dropped 0, overlimits 0 requeues 0)
`
	var got []string
	for _, m := range sentRE.FindAllStringSubmatch(out, -1) {
		got = append(got, m[1]+" "+m[2]+" "+m[3])
	}
	want := []string{"1:1 10Gbit 123", "1:10 10Gbit 100", "1:20 1Mbit 23"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tc classes (-want +got):\n%s", diff)
	}
}

func TestTransferRates(t *testing.T) {
	tr := Transfer{Bytes: 1000, Elapsed: 2 * time.Second, Samples: []int64{100, 200, 300, 400, 500, 600, 700, 1000}}
	if got := tr.Rate(); got != 500 {
		t.Errorf("Rate = %v, want 500", got)
	}
	// last 1 s = 4 samples: 1000 - 400.
	if got := tr.TailRate(time.Second); got != 600 {
		t.Errorf("TailRate(1s) = %v, want 600", got)
	}
}

func TestDNSQuery(t *testing.T) {
	q := dnsQuery(0x1234, "web.e2e.test")
	want := append([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, "\x03web\x03e2e\x04test\x00\x00\x01\x00\x01"...)
	if diff := cmp.Diff(want, q); diff != "" {
		t.Errorf("query (-want +got):\n%s", diff)
	}
}

// TestWebsocket runs the client against a minimal loopback server that
// checks the handshake, pings, and echoes a message in two fragments.
func TestWebsocket(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" || r.Header.Get("X-Test") != "yes" {
			http.Error(w, "bad handshake", 400)
			return
		}
		h := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		c, brw, _ := w.(http.Hijacker).Hijack()
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
			base64.StdEncoding.EncodeToString(h[:])+"\r\n\r\n")
		msg := readClientFrame(t, brw.Reader)
		c.Write([]byte{0x89, 2, 'h', 'i'}) // ping: the client must answer and go on
		half := len(msg) / 2
		c.Write(serverFrame(0x01, msg[:half])) // text, not final
		c.Write(serverFrame(0x80, msg[half:])) // continuation (opcode 0), final
		if pong := readClientFrame(t, brw.Reader); string(pong) != "hi" {
			t.Errorf("pong payload %q", pong)
		}
	}))
	defer srv.Close()
	dial := func(ctx context.Context, n, a string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, n, a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, dial, strings.Replace(srv.URL, "http", "ws", 1)+"/x", http.Header{"X-Test": {"yes"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.c.Close()
	want := strings.Repeat("jupyter ", 20000) // > 64 KiB: 8-byte length
	if err := ws.WriteText([]byte(want)); err != nil {
		t.Fatal(err)
	}
	got, err := ws.Read()
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("echo: got %d bytes, want %d", len(got), len(want))
	}
}

func readClientFrame(t *testing.T, r *bufio.Reader) []byte {
	t.Helper()
	var h [2]byte
	io.ReadFull(r, h[:])
	if h[1]&0x80 == 0 {
		t.Errorf("client frame not masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		io.ReadFull(r, e[:])
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		io.ReadFull(r, e[:])
		n = binary.BigEndian.Uint64(e[:])
	}
	var mask [4]byte
	io.ReadFull(r, mask[:])
	p := make([]byte, n)
	io.ReadFull(r, p)
	for i := range p {
		p[i] ^= mask[i%4]
	}
	return p
}

func serverFrame(b0 byte, p []byte) []byte {
	f := []byte{b0}
	switch n := len(p); {
	case n < 126:
		f = append(f, byte(n))
	case n < 65536:
		f = append(f, 126, byte(n>>8), byte(n))
	default:
		f = append(f, 127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	return append(f, p...)
}
