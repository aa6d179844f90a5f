package dnstest

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// TestServe: queries over UDP and over one TCP connection (two of them in
// one write) are answered in turn; a nil answer closes the TCP connection.
func TestServe(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	Serve(pc, l, func(q []byte, udp bool) []byte {
		if string(q) == "drop" {
			return nil
		}
		if udp {
			return append([]byte("udp:"), q...)
		}
		return append([]byte("tcp:"), q...)
	})

	u, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	_ = u.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := u.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := u.Read(buf); err != nil || string(buf[:n]) != "udp:a" {
		t.Errorf("UDP answer %q, %v; want \"udp:a\"", buf[:n], err)
	}

	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(AppendTCP(AppendTCP(nil, []byte("b")), []byte("c"))); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tcp:b", "tcp:c"} {
		if got, err := ReadTCP(c); err != nil || string(got) != want {
			t.Errorf("TCP answer %q, %v; want %q", got, err, want)
		}
	}
	if err := WriteTCP(c, []byte("drop")); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadTCP(c); err == nil {
		t.Errorf("after a nil answer the connection gave %q, want it closed", got)
	}

	var b bytes.Buffer
	if err := WriteTCP(&b, []byte("xyz")); err != nil || !bytes.Equal(b.Bytes(), []byte{0, 3, 'x', 'y', 'z'}) {
		t.Errorf("WriteTCP wrote %q, %v", b.Bytes(), err)
	}
}
