//go:build linux

package netns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Kernel is a running kernel of the user's server, driven over its
// websocket like the notebook UI does.
type Kernel struct {
	c       *Client
	ID      string
	ws      *websocket.Conn
	session string
	// A reader goroutine keeps reading into msgs; while it reads, the
	// library answers the server's pings (jupyter-server closes a socket
	// that does not answer them).
	msgs chan []byte
	done chan struct{}
	err  error
	// Received counts the bytes of every message read from the socket.
	Received atomic.Int64
}

func (k *Kernel) readLoop() {
	defer close(k.done)
	for {
		_, p, err := k.ws.Read(context.Background())
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
	// What a browser sends: same-origin Origin, the page's cookies (from
	// the jar) or the token, Sec-Fetch-Mode websocket (JupyterHub 5 skips
	// its _xsrf check for websockets; jupyter-server checks Origin).
	hdr := http.Header{"Origin": {c.Bed.BaseURL}, "Sec-Fetch-Mode": {"websocket"}, "Sec-Fetch-Site": {"same-origin"}}
	if c.Token != "" {
		hdr.Set("Authorization", "token "+c.Token)
	}
	session := randomToken()
	wsURL := strings.Replace(c.UserURL(), "http", "ws", 1) + "/api/kernels/" + k.ID + "/channels?session_id=" + session
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{HTTPClient: c.HTTP, HTTPHeader: hdr})
	if err != nil {
		c.Do(ctx, "DELETE", c.UserURL()+"/api/kernels/"+k.ID, nil, nil)
		return nil, fmt.Errorf("connecting to kernel %s: %w", k.ID, err)
	}
	// Plots and base64 output lines are far above the library's 32 KiB default.
	ws.SetReadLimit(256 << 20)
	kn := &Kernel{c: c, ID: k.ID, ws: ws, session: session, msgs: make(chan []byte, 4096), done: make(chan struct{})}
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

// ErrStillRunning is Execute's error for a cell with no reply and no idle
// status by its timeout, over a websocket that is still up.
var ErrStillRunning = errors.New("cell still running")

// State asks the server, over the REST API, for the kernel's execution
// state ("idle", "busy", ...): the server's view, which needs neither the
// kernel's websocket nor an answer from the kernel.
func (k *Kernel) State(ctx context.Context) (string, error) {
	data, err := k.c.Do(ctx, "GET", k.c.UserURL()+"/api/kernels/"+k.ID, nil, nil)
	if err != nil {
		return "", err
	}
	var m struct {
		ExecutionState string `json:"execution_state"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return "", fmt.Errorf("decoding the kernel's model: %w", err)
	}
	return m.ExecutionState, nil
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
	if err := k.ws.Write(ctx, websocket.MessageText, msg); err != nil {
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
			return r, fmt.Errorf("%w after %s", ErrStillRunning, timeout)
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
	k.ws.Close(websocket.StatusNormalClosure, "")
	_, err := k.c.Do(ctx, "DELETE", k.c.UserURL()+"/api/kernels/"+k.ID, nil, nil)
	return err
}
