//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"
)

// ChromiumPath is Debian's Chromium launcher (package chromium).
const ChromiumPath = "/usr/bin/chromium"

// ChromiumFlags are the only flags the bed gives Chromium (chromedp adds
// --remote-debugging-pipe, --user-data-dir and the first page, about:blank).
// No QUIC, no background or component traffic, nothing synced: the browser
// talks only to the bed's proxy.
var ChromiumFlags = []string{"headless", "no-sandbox", "disable-gpu", "disable-quic", "no-first-run",
	"disable-background-networking", "disable-component-update", "disable-sync"}

// Browser is Debian's headless Chromium, started inside the bed's client
// namespace and driven with chromedp.
//
// The DevTools connection is a pipe (--remote-debugging-pipe: file
// descriptors 3 and 4, which the process inherits through `ip netns exec`),
// not a TCP port: a port would live inside the client namespace, where the
// test binary could reach it only from a thread that has joined the
// namespace, and a port is reachable by anything else in that namespace too.
// A pipe crosses the namespace boundary by construction and belongs to this
// process alone.
type Browser struct {
	// Version is the browser's own product string (Browser.getVersion),
	// e.g. HeadlessChrome/156.0.8078.114.
	Version string

	bed         *Bed
	ctx         context.Context // the browser's first tab
	cancel      context.CancelFunc
	allocCancel context.CancelFunc
	log         *os.File
}

// StartBrowser starts Chromium in the client namespace with a fresh profile
// in the run's directory and waits until it answers.
func (b *Bed) StartBrowser(ctx context.Context) (*Browser, error) {
	if _, err := os.Stat(ChromiumPath); err != nil {
		return nil, fmt.Errorf("no Chromium (scripts/setup.sh installs Debian's chromium): %w", err)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("finding ip: %w", err)
	}
	home := filepath.Join(b.Dir, "chromium-home")
	profile := filepath.Join(b.Dir, "chromium-profile")
	for _, d := range []string{home, profile} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("making %s: %w", d, err)
		}
	}
	logf, err := os.Create(filepath.Join(b.Dir, "chromium.log"))
	if err != nil {
		return nil, fmt.Errorf("creating the browser log: %w", err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ChromiumPath),
		chromedp.UserDataDir(profile),
		chromedp.CombinedOutput(logf),
		// A home of its own: caches and configs that Chromium writes
		// outside the profile go into the run's directory, not /root.
		chromedp.NoInheritEnv,
		chromedp.Env("HOME="+home, "XDG_CONFIG_HOME="+home+"/.config", "XDG_CACHE_HOME="+home+"/.cache",
			"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"),
		chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			// ip netns exec joins the client namespace and execs the
			// launcher, which execs Chromium: the pipe's descriptors
			// 3 and 4 are inherited all the way.
			cmd.Args = append([]string{"ip", "netns", "exec", b.Client.Name, cmd.Path}, cmd.Args[1:]...)
			cmd.Path = ip
			// chromedp sets this itself unless a ModifyCmdFunc is given.
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		}),
	}
	for _, f := range ChromiumFlags {
		opts = append(opts, chromedp.Flag(f, true))
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	br := &Browser{bed: b, ctx: bctx, cancel: bcancel, allocCancel: acancel, log: logf}
	// The first run starts the browser, which lives as long as the context
	// of that run: bctx itself, bounded here by a timer, not a child
	// context that would end the browser with it.
	timer := time.AfterFunc(60*time.Second, bcancel)
	stop := context.AfterFunc(ctx, bcancel)
	err = chromedp.Do(bctx)
	timer.Stop()
	stop()
	var v browser.GetVersionResult
	if err == nil {
		vctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		v, err = chromedp.CallBrowser(vctx, browser.GetVersion, cdp.Empty{})
		cancel()
	}
	if err != nil {
		br.Close()
		return nil, fmt.Errorf("starting chromium in %s (see %s): %w", b.Client.Name, logf.Name(), err)
	}
	br.Version = v.Product
	return br, nil
}

// Close ends the browser and its processes.
func (br *Browser) Close() {
	br.cancel()
	br.allocCancel()
	br.log.Close()
}

// Tab is a page in a browser context of its own: its own cookies, cache
// and downloads, like a separate browser profile, so that two users can be
// logged in side by side.
type Tab struct {
	br        *Browser
	ctx       context.Context
	cancel    context.CancelFunc
	contextID cdp.BrowserContextID
	// Downloads is where the tab's downloads are saved.
	Downloads string
}

// NewTab opens a page in a new browser context with a 1440x900 viewport.
func (br *Browser) NewTab(name string) (*Tab, error) {
	ctx, cancel := chromedp.NewContext(br.ctx, chromedp.WithNewBrowserContext())
	t := &Tab{br: br, ctx: ctx, cancel: cancel, Downloads: filepath.Join(br.bed.Dir, "downloads-"+name)}
	if err := os.MkdirAll(t.Downloads, 0o700); err != nil {
		cancel()
		return nil, fmt.Errorf("making %s: %w", t.Downloads, err)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1440, 900)); err != nil {
		cancel()
		return nil, fmt.Errorf("opening a tab: %w", err)
	}
	t.contextID = chromedp.FromContext(ctx).BrowserContextID
	if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, BrowserContextID: t.contextID,
		DownloadPath: t.Downloads, EventsEnabled: new(true),
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("setting the download behaviour: %w", err)
	}
	return t, nil
}

// Close closes the tab and disposes of its browser context.
func (t *Tab) Close() { t.cancel() }

// Do runs actions in the tab, bounded by timeout.
func (t *Tab) Do(timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(t.ctx, timeout)
	defer cancel()
	return chromedp.Do(ctx, actions...)
}

// Eval evaluates a JavaScript expression in the page (promises awaited).
func Eval[T any](t *Tab, timeout time.Duration, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(t.ctx, timeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAsValue, chromedp.EvalAwaitPromise))
}

// WaitJS evaluates a JavaScript expression every 10 ms until it is true, for
// at most timeout. The loop runs here, not in the page, so that it survives
// navigations (a login redirects several times): an evaluation that fails
// while a page is replaced is retried. On timeout, the error carries the
// value of diag (an expression that describes the page's state), when it is
// not empty.
func (t *Tab) WaitJS(timeout time.Duration, expr, diag string) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := Eval[bool](t, 5*time.Second, expr)
		if err == nil && ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("still not true after %s: %s", timeout, expr)
			if last != nil {
				msg += fmt.Sprintf(" (last error: %v)", last)
			}
			if diag != "" {
				if state, derr := Eval[string](t, 5*time.Second, diag); derr == nil {
					msg += "; page state: " + state
				}
			}
			return errors.New(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
