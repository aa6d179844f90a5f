//go:build linux

package netns

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// wsConn is a minimal RFC 6455 client: text frames out (masked), data
// frames in (with continuation), pings answered. Enough for the Jupyter
// kernel channels protocol.
type wsConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialWS(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), rawURL string, hdr http.Header) (*wsConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	c, err := dial(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", u.Host, err)
	}
	keyb := make([]byte, 16)
	rand.Read(keyb)
	key := base64.StdEncoding.EncodeToString(keyb)
	var sb strings.Builder
	fmt.Fprintf(&sb, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", u.RequestURI(), u.Host, key)
	for k, vs := range hdr {
		for _, v := range vs {
			fmt.Fprintf(&sb, "%s: %s\r\n", k, v)
		}
	}
	sb.WriteString("\r\n")
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, sb.String()); err != nil {
		c.Close()
		return nil, fmt.Errorf("writing the websocket handshake: %w", err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the websocket handshake: %w", err)
	}
	if resp.StatusCode != 101 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		c.Close()
		return nil, fmt.Errorf("websocket handshake: %s: %s", resp.Status, body)
	}
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(h[:]) {
		c.Close()
		return nil, errors.New("websocket handshake: bad Sec-WebSocket-Accept")
	}
	c.SetDeadline(time.Time{})
	return &wsConn{c: c, br: br}, nil
}

func (w *wsConn) writeFrame(op byte, p []byte) error {
	hdr := []byte{0x80 | op}
	switch n := len(p); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 65536:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := make([]byte, 4)
	rand.Read(mask)
	hdr = append(hdr, mask...)
	buf := make([]byte, len(p))
	for i := range p {
		buf[i] = p[i] ^ mask[i%4]
	}
	_, err := w.c.Write(append(hdr, buf...))
	return err
}

// WriteText sends one text message.
func (w *wsConn) WriteText(p []byte) error { return w.writeFrame(1, p) }

// Read returns the next data message.
func (w *wsConn) Read() ([]byte, error) {
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var e [2]byte
			if _, err := io.ReadFull(w.br, e[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(e[:]))
		case 127:
			var e [8]byte
			if _, err := io.ReadFull(w.br, e[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(e[:])
		}
		if n > 256<<20 {
			return nil, fmt.Errorf("websocket frame of %d bytes", n)
		}
		var mask [4]byte
		if h[1]&0x80 != 0 {
			if _, err := io.ReadFull(w.br, mask[:]); err != nil {
				return nil, err
			}
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(w.br, p); err != nil {
			return nil, err
		}
		if h[1]&0x80 != 0 {
			for i := range p {
				p[i] ^= mask[i%4]
			}
		}
		switch op {
		case 8:
			return nil, io.EOF
		case 9:
			if err := w.writeFrame(10, p); err != nil {
				return nil, err
			}
			continue
		case 10:
			continue
		}
		msg = append(msg, p...)
		if fin {
			return msg, nil
		}
	}
}

func (w *wsConn) Close() error {
	w.writeFrame(8, []byte{3, 232})
	return w.c.Close()
}

// Kernel is a running kernel of the user's server, driven over its
// websocket like the notebook UI does.
type Kernel struct {
	c       *Client
	ID      string
	ws      *wsConn
	session string
	// A reader goroutine keeps reading (and answering the server's pings,
	// or the server closes an idle socket after 90 s) into msgs.
	msgs chan []byte
	done chan struct{}
	err  error
	// Received counts the bytes of every message read from the socket.
	Received atomic.Int64
}

func (k *Kernel) readLoop() {
	defer close(k.done)
	for {
		p, err := k.ws.Read()
		if err != nil {
			k.err = err
			return
		}
		k.Received.Add(int64(len(p)))
		k.msgs <- p
	}
}

// StartKernel starts a python3 kernel through the REST API and connects to
// its channels websocket (cookie auth with a same-origin Origin, or token).
func (c *Client) StartKernel(ctx context.Context) (*Kernel, error) {
	data, err := c.Do(ctx, "POST", c.UserURL()+"/api/kernels", []byte(`{"name":"python3"}`), nil)
	if err != nil {
		return nil, fmt.Errorf("starting a kernel: %w", err)
	}
	var k struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(data, &k); err != nil {
		return nil, fmt.Errorf("decoding the kernel: %w", err)
	}
	hdr := http.Header{"Origin": {c.Bed.BaseURL}}
	if c.Token != "" {
		hdr.Set("Authorization", "token "+c.Token)
	} else {
		hdr.Set("Cookie", c.cookieHeader())
	}
	wsURL := strings.Replace(c.UserURL(), "http", "ws", 1) + "/api/kernels/" + k.ID + "/channels"
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ws, err := dialWS(dctx, c.Bed.Client.DialContext, wsURL, hdr)
	if err != nil {
		c.Do(ctx, "DELETE", c.UserURL()+"/api/kernels/"+k.ID, nil, nil)
		return nil, fmt.Errorf("connecting to kernel %s: %w", k.ID, err)
	}
	kn := &Kernel{c: c, ID: k.ID, ws: ws, session: randomToken(), msgs: make(chan []byte, 4096), done: make(chan struct{})}
	go kn.readLoop()
	return kn, nil
}

// ExecResult is what one cell produced.
type ExecResult struct {
	Status  string
	Stdout  string
	Error   string
	Display int // bytes of display data (e.g. image/png)
	Bytes   int // bytes of websocket messages received for the cell
	Elapsed time.Duration
}

// Execute runs code and waits for both execute_reply and the idle status
// (their order is not guaranteed).
func (k *Kernel) Execute(ctx context.Context, code string, timeout time.Duration) (ExecResult, error) {
	id := randomToken()
	msg, _ := json.Marshal(map[string]any{
		"header":        map[string]any{"msg_id": id, "username": k.c.User, "session": k.session, "msg_type": "execute_request", "version": "5.3"},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "channel": "shell",
		"content": map[string]any{"code": code, "silent": false, "store_history": false, "user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true},
	})
	t0 := time.Now()
	// Drop what an earlier, abandoned cell left behind.
	for len(k.msgs) > 0 {
		<-k.msgs
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	if err := k.ws.WriteText(msg); err != nil {
		return ExecResult{}, fmt.Errorf("sending execute_request: %w", err)
	}
	var r ExecResult
	var out strings.Builder
	idle := false
	for r.Status == "" || !idle {
		var p []byte
		select {
		case p = <-k.msgs:
		case <-k.done:
			return r, fmt.Errorf("reading kernel messages: %w", k.err)
		case <-timer.C:
			return r, fmt.Errorf("cell still running after %s", timeout)
		case <-ctx.Done():
			return r, ctx.Err()
		}
		r.Bytes += len(p)
		var m struct {
			MsgType      string `json:"msg_type"`
			ParentHeader struct {
				MsgID string `json:"msg_id"`
			} `json:"parent_header"`
			Content struct {
				Text           string            `json:"text"`
				Status         string            `json:"status"`
				ExecutionState string            `json:"execution_state"`
				Ename          string            `json:"ename"`
				Evalue         string            `json:"evalue"`
				Data           map[string]string `json:"data"`
			} `json:"content"`
		}
		if err := json.Unmarshal(p, &m); err != nil || m.ParentHeader.MsgID != id {
			continue
		}
		switch m.MsgType {
		case "stream":
			out.WriteString(m.Content.Text)
		case "display_data", "execute_result":
			for _, v := range m.Content.Data {
				r.Display += len(v)
			}
		case "error":
			r.Error = m.Content.Ename + ": " + m.Content.Evalue
		case "execute_reply":
			r.Status = m.Content.Status
		case "status":
			idle = m.Content.ExecutionState == "idle"
		}
	}
	r.Stdout = out.String()
	r.Elapsed = time.Since(t0)
	return r, nil
}

// Close disconnects and deletes the kernel.
func (k *Kernel) Close(ctx context.Context) error {
	k.ws.Close()
	_, err := k.c.Do(ctx, "DELETE", k.c.UserURL()+"/api/kernels/"+k.ID, nil, nil)
	return err
}
