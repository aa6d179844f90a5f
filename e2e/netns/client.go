//go:build linux

package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Client is a browser-like client in the client namespace: a cookie jar,
// the _xsrf header and the Sec-Fetch-* headers a browser sends, and a
// same-origin Referer. JupyterHub 5 decides from Sec-Fetch-Mode whether a
// cookie-authenticated request needs the _xsrf token (see docs/e2e.md).
type Client struct {
	Bed  *Bed
	User string
	HTTP *http.Client
	// Token, when set, authenticates API calls instead of cookies.
	Token string
}

// NewClient returns a client for user (empty: anonymous) that keeps its
// connections to the proxy alive, as a browser does.
func (b *Bed) NewClient(user string) *Client {
	return b.newClient(user, false)
}

// NewChurnClient returns a client that opens a new connection per request.
func (b *Bed) NewChurnClient(user string) *Client {
	return b.newClient(user, true)
}

func (b *Bed) newClient(user string, churn bool) *Client {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{
		DialContext:         b.Client.DialContext,
		DisableCompression:  true,
		DisableKeepAlives:   churn,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{Bed: b, User: user, HTTP: &http.Client{Jar: jar, Transport: tr}}
}

// UserURL is the base of the user's single-user server behind the proxy.
func (c *Client) UserURL() string { return c.Bed.BaseURL + "/user/" + c.User }

// hiddenXSRF finds the _xsrf value of the hub's login form.
var hiddenXSRF = regexp.MustCompile(`name="_xsrf"\s+value="([^"]+)"|value="([^"]+)"\s+name="_xsrf"`)

// Login posts the hub's login form with the form's _xsrf value, as a browser
// does (JupyterHub 5 refuses the form without it).
func (c *Client) Login(ctx context.Context) error {
	page, err := c.get(ctx, c.Bed.BaseURL+"/hub/login")
	if err != nil {
		return err
	}
	m := hiddenXSRF.FindSubmatch(page)
	if m == nil {
		return fmt.Errorf("the hub's login form has no _xsrf field: %.300s", page)
	}
	xsrf := string(m[1]) + string(m[2])
	form := url.Values{"username": {c.User}, "password": {Password}, "_xsrf": {xsrf}}
	req, _ := http.NewRequestWithContext(ctx, "POST", c.Bed.BaseURL+"/hub/login?next=", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Referer", c.Bed.BaseURL+"/hub/login")
	// Do not follow the redirect to /hub/spawn: servers are started by API.
	cl := *c.HTTP
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("posting the login form: %w", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 302 {
		return fmt.Errorf("posting the login form: %s", resp.Status)
	}
	return nil
}

func (c *Client) get(ctx context.Context, u string) ([]byte, error) {
	resp, err := c.Do(ctx, "GET", u, nil, nil)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Do sends a request with the xsrf header and Referer (or the token) and
// returns the body; non-2xx answers are errors.
func (c *Client) Do(ctx context.Context, method, u string, body []byte, hdr http.Header) ([]byte, error) {
	resp, err := c.Send(ctx, method, u, body, hdr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", method, u, err)
	}
	if resp.StatusCode/100 != 2 {
		return data, fmt.Errorf("%s %s: %s: %.200s", method, u, resp.Status, data)
	}
	return data, nil
}

// Send is Do without reading the body.
func (c *Client) Send(ctx context.Context, method, u string, body []byte, hdr http.Header) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "token "+c.Token)
	} else {
		req.Header.Set("Referer", c.UserURL()+"/lab")
		if x := c.xsrf(); x != "" {
			req.Header.Set("X-XSRFToken", x)
		}
		// What a browser sends: a page load is a navigation, JupyterLab's
		// API calls are same-origin fetches (which JupyterHub 5 checks
		// for _xsrf). Callers may set their own.
		if req.Header.Get("Sec-Fetch-Mode") == "" {
			mode := "navigate"
			if method != "GET" || strings.Contains(req.URL.Path, "/api/") {
				mode = "cors"
			}
			req.Header.Set("Sec-Fetch-Mode", mode)
			req.Header.Set("Sec-Fetch-Site", "same-origin")
		}
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	return resp, nil
}

func (c *Client) xsrf() string {
	u, _ := url.Parse(c.UserURL() + "/")
	for _, ck := range c.HTTP.Jar.Cookies(u) {
		if ck.Name == "_xsrf" {
			return ck.Value
		}
	}
	return ""
}

// cookieHeader is the Cookie header for the user's server (for the websocket).
func (c *Client) cookieHeader() string {
	u, _ := url.Parse(c.UserURL() + "/")
	var parts []string
	for _, ck := range c.HTTP.Jar.Cookies(u) {
		parts = append(parts, ck.Name+"="+ck.Value)
	}
	return strings.Join(parts, "; ")
}

// OpenLab loads the JupyterLab page; the first visit does the OAuth dance
// and sets the _xsrf cookie.
func (c *Client) OpenLab(ctx context.Context) error {
	_, err := c.get(ctx, c.UserURL()+"/lab")
	return err
}

// admin is a client with the service token (admin:servers, tokens).
func (b *Bed) admin() *Client {
	c := b.NewClient("")
	c.Token = b.ServiceToken
	return c
}

// StartServer starts the user's server through the hub API and waits until
// the hub reports it ready.
func (b *Bed) StartServer(ctx context.Context, user string, timeout time.Duration) (time.Duration, error) {
	a := b.admin()
	t0 := time.Now()
	resp, err := a.Send(ctx, "POST", b.BaseURL+"/hub/api/users/"+user+"/server", nil, nil)
	if err != nil {
		return 0, err
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 && resp.StatusCode != 202 && resp.StatusCode != 400 { // 400: already running
		return 0, fmt.Errorf("starting the server of %s: %s: %s", user, resp.Status, msg)
	}
	err = poll(timeout, func() error {
		_, ready, pending, err := b.serverState(ctx, user)
		if err != nil {
			return err
		}
		if ready {
			return nil
		}
		if !pending {
			return stop{fmt.Errorf("the server of %s stopped while starting (see %s/hub.log)", user, b.Dir)}
		}
		return fmt.Errorf("the server of %s is not ready", user)
	})
	return time.Since(t0), err
}

func (b *Bed) serverState(ctx context.Context, user string) (exists, ready, pending bool, err error) {
	data, err := b.admin().Do(ctx, "GET", b.BaseURL+"/hub/api/users/"+user, nil, nil)
	if err != nil {
		return false, false, false, err
	}
	var u struct {
		Servers map[string]struct {
			Ready   bool    `json:"ready"`
			Pending *string `json:"pending"`
		} `json:"servers"`
	}
	if err := json.Unmarshal(data, &u); err != nil {
		return false, false, false, fmt.Errorf("decoding the user %s: %w", user, err)
	}
	s, ok := u.Servers[""]
	if !ok {
		return false, false, false, nil
	}
	return true, s.Ready, s.Pending != nil, nil
}

// StopServer stops the user's server through the hub API.
func (b *Bed) StopServer(ctx context.Context, user string) error {
	resp, err := b.admin().Send(ctx, "DELETE", b.BaseURL+"/hub/api/users/"+user+"/server", nil, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 && resp.StatusCode != 400 {
		return fmt.Errorf("stopping the server of %s: %s", user, resp.Status)
	}
	return poll(30*time.Second, func() error {
		exists, _, _, err := b.serverState(ctx, user)
		if err != nil {
			return err
		}
		if exists {
			return fmt.Errorf("the server of %s is still there", user)
		}
		return nil
	})
}

// UserToken mints an API token for user with the service token.
func (b *Bed) UserToken(ctx context.Context, user string) (string, error) {
	data, err := b.admin().Do(ctx, "POST", b.BaseURL+"/hub/api/users/"+user+"/tokens", []byte(`{"note":"e2e","expires_in":3600}`), nil)
	if err != nil {
		return "", err
	}
	var t struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(data, &t); err != nil {
		return "", fmt.Errorf("decoding the token: %w", err)
	}
	return t.Token, nil
}

// Transfer is the result of a download.
type Transfer struct {
	Status  int
	Bytes   int64
	Elapsed time.Duration
	// Samples are cumulative byte counts every 250 ms.
	Samples []int64
	Err     error
}

// Rate is the mean rate in bytes/s over the whole transfer.
func (t Transfer) Rate() float64 {
	if t.Elapsed <= 0 {
		return 0
	}
	return float64(t.Bytes) / t.Elapsed.Seconds()
}

// TailRate is the rate in bytes/s over the last d of the transfer.
func (t Transfer) TailRate(d time.Duration) float64 {
	n := int(d / sampleEvery)
	if len(t.Samples) <= n || n == 0 {
		return t.Rate()
	}
	last := t.Samples[len(t.Samples)-1]
	prev := t.Samples[len(t.Samples)-1-n]
	return float64(last-prev) / d.Seconds()
}

const sampleEvery = 250 * time.Millisecond

// Download GETs u and reads the body for at most limit, sampling progress.
func (c *Client) Download(ctx context.Context, u string, limit time.Duration, hdr http.Header) Transfer {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t0 := time.Now()
	resp, err := c.Send(ctx, "GET", u, nil, hdr)
	if err != nil {
		return Transfer{Err: err, Elapsed: time.Since(t0)}
	}
	defer resp.Body.Close()
	tr := Transfer{Status: resp.StatusCode}
	buf := make([]byte, 256<<10)
	// Sample from the response headers on, so the server's time to first
	// byte is not mistaken for a slow phase of the transfer.
	next := time.Now().Add(sampleEvery)
	for {
		n, err := resp.Body.Read(buf)
		tr.Bytes += int64(n)
		for now := time.Now(); !now.Before(next); next = next.Add(sampleEvery) {
			tr.Samples = append(tr.Samples, tr.Bytes)
		}
		if err != nil {
			if err != io.EOF && ctx.Err() == nil {
				tr.Err = err
			}
			break
		}
	}
	tr.Elapsed = time.Since(t0)
	return tr
}

func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// dnsQuery is a minimal DNS A query for name.
func dnsQuery(id uint16, name string) []byte {
	q := make([]byte, 12)
	binary.BigEndian.PutUint16(q[0:], id)
	binary.BigEndian.PutUint16(q[2:], 0x0100) // recursion desired
	binary.BigEndian.PutUint16(q[4:], 1)
	for _, l := range strings.Split(name, ".") {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ShutdownSessions deletes the user's sessions of the given notebooks (and
// so their kernels) through the server's API, with the service token.
func (b *Bed) ShutdownSessions(ctx context.Context, user string, paths ...string) error {
	a := b.admin()
	base := b.BaseURL + "/user/" + user + "/api/sessions"
	data, err := a.Do(ctx, "GET", base, nil, nil)
	if err != nil {
		return fmt.Errorf("listing the sessions of %s: %w", user, err)
	}
	var sessions []struct {
		ID   string `json:"id"`
		Path string `json:"path"`
	}
	if err := json.Unmarshal(data, &sessions); err != nil {
		return fmt.Errorf("decoding the sessions of %s: %w", user, err)
	}
	for _, s := range sessions {
		for _, p := range paths {
			if s.Path == p {
				if _, err := a.Do(ctx, "DELETE", base+"/"+s.ID, nil, nil); err != nil {
					return fmt.Errorf("deleting the session of %s: %w", p, err)
				}
			}
		}
	}
	return nil
}
