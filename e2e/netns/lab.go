//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/storage"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// Lab drives JupyterLab for one user in a browser tab the way a person
// does: the hub's login form, double-clicks in the file browser, the menu
// bar, the keyboard. Each action returns when the page shows its result,
// judged from JupyterLab's own DOM (the splash screen gone, the listing,
// the cells' prompts and outputs, the notebook's kernel status).
type Lab struct {
	*Tab
	Base string // the hub's public URL, as the client sees it
	User string
	// Timeout bounds each action (a loaded 2-core machine can take seconds).
	Timeout time.Duration
	// Logf, when set, receives every input event the lab sends (debugging).
	Logf func(format string, args ...any)
}

func (l *Lab) labURL() string { return l.Base + "/user/" + l.User + "/lab" }

func jsString(s string) string { return quote(s) }

// dirItem is a JavaScript expression for the file browser's entry name.
func dirItem(name string) string {
	return `[...document.querySelectorAll('.jp-DirListing-content .jp-DirListing-item')].find(e => e.querySelector('.jp-DirListing-itemText')?.textContent.trim() === ` + jsString(name) + `)`
}

// current is the notebook panel in front.
const current = `document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)')`

// kernelIdle: the notebook in front has a kernel and it is idle. The
// notebook's execution indicator says "idle" also before a kernel is
// attached (it goes idle, initializing, connecting, unknown, idle when a
// notebook opens), so the status bar's kernel item must name a kernel and
// say Idle too.
const kernelIdle = `(() => { const k = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
	const sb = document.querySelector('.jp-StatusBar-TextItem[title^="Change kernel for"]')?.textContent.trim() || '';
	return !!k && k.dataset.status === 'idle' && sb.endsWith('| Idle') && !sb.startsWith('No Kernel'); })()`

// labReady: JupyterLab has started (no splash), shows its launcher, and the
// file browser lists the home directory.
func (l *Lab) labReady() string {
	return `(() => document.readyState === 'complete' && location.pathname.startsWith('/user/` + l.User + `/lab') &&
		!document.querySelector('#jupyterlab-splash') && !!document.querySelector('.jp-Launcher-body') &&
		!!(` + dirItem(AnalysisNotebook) + `))()`
}

const labState = `(() => location.href + ' splash=' + !!document.querySelector('#jupyterlab-splash') + ' items=' + document.querySelectorAll('.jp-DirListing-item').length)()`

// notebookReady: the named notebook is in front with cells cells, images
// images (any number when images < 0), all decoded, and its kernel idle.
func notebookReady(name string, cells, images int) string {
	return fmt.Sprintf(`(() => { const p = %s; if (!p) return false;
		const tab = document.querySelector('.lm-DockPanel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel');
		if (!tab || tab.textContent.trim() !== %s) return false;
		if (p.querySelectorAll('.jp-Cell').length !== %d) return false;
		const imgs = [...p.querySelectorAll('.jp-OutputArea-output img')];
		if ((%d >= 0 && imgs.length !== %[4]d) || !imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
		return %s; })()`, current, jsString(name), cells, images, kernelIdle)
}

const notebookState = `(() => { const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
	const tab = document.querySelector('.lm-DockPanel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel');
	if (!p) return 'no notebook in front; tab ' + (tab && tab.textContent);
	const k = p.querySelector('.jp-Notebook-ExecutionIndicator');
	const sb = document.querySelector('.jp-StatusBar-TextItem[title^="Change kernel for"]')?.textContent;
	return 'tab ' + (tab && tab.textContent) + ' status bar: ' + sb + ' cells=' + p.querySelectorAll('.jp-Cell').length +
		' imgs=' + p.querySelectorAll('.jp-OutputArea-output img').length + ' kernel=' + (k && k.dataset.status) +
		' prompts=' + [...p.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent).join(',') })()`

// point waits until the element expr evaluates to is there, visible and
// still (the same place in two readings 20 ms apart: a toast slides in),
// scrolls it into view and returns its centre.
func (l *Lab) point(expr string) (x, y float64, err error) {
	js := `(() => { const e = ` + expr + `; if (!e) return null; e.scrollIntoView({block: 'nearest', inline: 'nearest'});
		const r = e.getBoundingClientRect(); if (!r.width || !r.height) return null;
		return [r.x + r.width / 2, r.y + r.height / 2] })()`
	deadline := time.Now().Add(l.Timeout)
	var prev []float64
	for {
		xy, err := Eval[[]float64](l.Tab, 5*time.Second, js)
		if err == nil && len(xy) == 2 {
			if len(prev) == 2 && prev[0] == xy[0] && prev[1] == xy[1] {
				return xy[0], xy[1], nil
			}
			prev = xy
		} else {
			prev = nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return 0, 0, fmt.Errorf("no visible element %s after %s: %w", expr, l.Timeout, err)
			}
			return 0, 0, fmt.Errorf("no visible element %s after %s", expr, l.Timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// click moves the mouse onto the element expr evaluates to and clicks it
// count times with button, as a person does (Lumino's menus act on the
// item under the pointer, which a click without a move does not set).
func (l *Lab) click(expr string, button input.MouseButton, count int) error {
	x, y, err := l.point(expr)
	if err != nil {
		return err
	}
	if l.Logf != nil {
		l.Logf("click %s x%d at %.0f,%.0f: %.120s", button, count, x, y, expr)
	}
	actions := []chromedp.Action[chromedp.Void]{chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, x, y)}
	for n := 1; n <= count; n++ {
		opts := []chromedp.MouseOption{chromedp.ButtonType(button), chromedp.ClickCount(n)}
		actions = append(actions, chromedp.MouseEvent(input.DispatchMouseEventTypeMousePressed, x, y, opts...), chromedp.MouseEvent(input.DispatchMouseEventTypeMouseReleased, x, y, opts...))
	}
	return l.Do(l.Timeout, actions...)
}

func css(sel string) string { return `document.querySelector(` + jsString(sel) + `)` }

// Login clears the tab's cookies (a new session; the cache stays warm, as
// a browser's does) and logs in through the hub's form, which redirects,
// after the OAuth round trips, to JupyterLab; it returns when JupyterLab is
// ready. ?reset opens JupyterLab with a fresh workspace (the launcher only).
func (l *Lab) Login() error {
	if _, err := chromedp.CallBrowser(l.ctx, storage.ClearCookies, storage.ClearCookiesParams{BrowserContextID: l.contextID}); err != nil {
		return fmt.Errorf("clearing cookies: %w", err)
	}
	next := url.QueryEscape("/user/" + l.User + "/lab?reset")
	if err := l.Do(l.Timeout,
		chromedp.Navigate(l.Base+"/hub/login?next="+next),
		chromedp.SendKeys(chromedp.ID("username_input"), l.User),
		chromedp.SendKeys(chromedp.ID("password_input"), Password),
	); err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	if err := l.click(css("#login_submit"), input.MouseButtonLeft, 1); err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	return l.WaitJS(l.Timeout, l.labReady(), labState)
}

// Reload loads JupyterLab again (a new page load, workspace reset).
func (l *Lab) Reload() error {
	if err := l.Do(l.Timeout, chromedp.Navigate(l.labURL()+"?reset")); err != nil {
		return fmt.Errorf("loading JupyterLab: %w", err)
	}
	return l.WaitJS(l.Timeout, l.labReady(), labState)
}

// Browse opens the data folder in the file browser and goes back home.
func (l *Lab) Browse() error {
	if err := l.click(dirItem(DataDir), input.MouseButtonLeft, 2); err != nil {
		return fmt.Errorf("opening %s: %w", DataDir, err)
	}
	inData := fmt.Sprintf(`(() => !!(%s) && document.querySelectorAll('.jp-DirListing-content .jp-DirListing-item').length === %d)()`, dirItem(fmt.Sprintf("site%02d.csv", DataFiles-1)), DataFiles)
	if err := l.WaitJS(l.Timeout, inData, labState); err != nil {
		return err
	}
	if err := l.click(css(`.jp-FileBrowser-crumbs .jp-BreadCrumbs-home`), input.MouseButtonLeft, 1); err != nil {
		return fmt.Errorf("going home: %w", err)
	}
	return l.WaitJS(l.Timeout, `!!(`+dirItem(AnalysisNotebook)+`)`, labState)
}

// Open double-clicks a notebook in the file browser and waits until it is
// shown, cells cells and images images (any when < 0) rendered, with its
// kernel started and idle.
func (l *Lab) Open(name string, cells, images int) error {
	if err := l.click(dirItem(name), input.MouseButtonLeft, 2); err != nil {
		return fmt.Errorf("opening %s: %w", name, err)
	}
	return l.WaitJS(l.Timeout, notebookReady(name, cells, images), notebookState)
}

// menu clicks a menu bar entry, then the item that runs command.
func (l *Lab) menu(label, command string) error {
	if err := l.click(`[...document.querySelectorAll('.lm-MenuBar-item')].find(e => e.textContent.trim() === `+jsString(label)+`)`, input.MouseButtonLeft, 1); err != nil {
		return err
	}
	return l.click(css(`.lm-Menu-item[data-command="`+command+`"]`), input.MouseButtonLeft, 1)
}

// RunAll runs every cell of the notebook in front (Run > Run All Cells)
// and waits until every code cell has a new output, a number in its prompt,
// the plot is drawn and the kernel is idle.
func (l *Lab) RunAll() error {
	// Mark the outputs there are now, to tell the new ones from them.
	if _, err := Eval[bool](l.Tab, 10*time.Second, `(() => { for (const o of `+current+`.querySelectorAll('.jp-OutputArea-output')) o.dataset.hwOld = '1'; return true })()`); err != nil {
		return err
	}
	if err := l.menu("Run", "runmenu:run-all"); err != nil {
		return fmt.Errorf("run all: %w", err)
	}
	done := `(() => { const p = ` + current + `; const cells = [...p.querySelectorAll('.jp-CodeCell')];
		if (!cells.length) return false;
		for (const c of cells) {
			if (!/^\[\d+\]/.test(c.querySelector('.jp-InputArea-prompt')?.textContent || '')) return false;
			const outs = [...c.querySelectorAll('.jp-OutputArea-output')];
			if (!outs.length || outs.some(o => o.dataset.hwOld)) return false;
		}
		const imgs = [...p.querySelectorAll('.jp-OutputArea-output img')];
		if (!imgs.length || !imgs.every(i => i.complete && i.naturalWidth > 0) || !p.querySelector('.jp-OutputArea-output table')) return false;
		return ` + kernelIdle + `; })()`
	return l.WaitJS(l.Timeout, done, notebookState)
}

// EditSave retypes the last line of the first code cell (Ctrl+End,
// Shift+Home, then the keys of line) and saves with Ctrl+S. It returns when the save command is done: the notebook is no
// longer marked unsaved and its checkpoint is made (JupyterLab's save
// command ignores a second Ctrl+S while the first one's checkpoint is still
// on its way, so a save is not over before that).
func (l *Lab) EditSave(line string) error {
	// The editor's visible box: its content can be wider than the view.
	editor := current + `.querySelector('.jp-CodeCell .jp-InputArea-editor')`
	name, err := Eval[string](l.Tab, 10*time.Second, `document.querySelector('.lm-DockPanel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel').textContent.trim()`)
	if err != nil {
		return fmt.Errorf("reading the notebook's name: %w", err)
	}
	// Count the checkpoint requests that complete from now on (an observer,
	// not the resource timing buffer, which JupyterLab's polling fills).
	watch := `(() => { window.hwCkObs?.disconnect(); window.hwCk = 0;
		window.hwCkObs = new PerformanceObserver(list => { for (const e of list.getEntries())
			if (e.name.includes('/api/contents/' + encodeURIComponent(` + jsString(name) + `) + '/checkpoints')) window.hwCk++ });
		window.hwCkObs.observe({type: 'resource'}); return true })()`
	if _, err := Eval[bool](l.Tab, 10*time.Second, watch); err != nil {
		return err
	}
	if err := l.click(editor, input.MouseButtonLeft, 1); err != nil {
		return fmt.Errorf("editing: %w", err)
	}
	// Type only once the cell is in edit mode with the focus in its editor:
	// keys that reach the notebook in command mode are commands (a digit
	// turns the cell into a markdown heading).
	first := current + `.querySelector('.jp-CodeCell')`
	editing := `(() => { const c = ` + first + `; return !!c && c.classList.contains('jp-mod-active') &&
		!!c.closest('.jp-Notebook.jp-mod-editMode') && !!document.activeElement?.closest('.cm-content') &&
		c.contains(document.activeElement) })()`
	if err := l.WaitJS(l.Timeout, editing, notebookState); err != nil {
		return fmt.Errorf("the cell did not enter edit mode: %w", err)
	}
	// Select the cell's last line and type over it: the cell keeps its size
	// round after round, and no Enter (which CodeMirror handles itself).
	if err := l.Do(l.Timeout,
		chromedp.KeyEvent(kb.End, chromedp.KeyModifiers(chromedp.ModifierCtrl)),
		chromedp.KeyEvent(kb.Home, chromedp.KeyModifiers(chromedp.ModifierShift)),
		chromedp.KeyEvent(line),
	); err != nil {
		return fmt.Errorf("editing: %w", err)
	}
	dirty := `!!document.querySelector('.lm-DockPanel .lm-TabBar-tab.lm-mod-current.jp-mod-dirty')`
	typed := `(() => { const c = ` + first + `; const lines = [...c.querySelectorAll('.cm-line')];
		return lines.length > 1 && lines[lines.length - 1].textContent === ` + jsString(line) + ` })()`
	if err := l.WaitJS(l.Timeout, dirty+` && `+typed, notebookState); err != nil {
		return fmt.Errorf("the edit did not reach the first code cell: %w", err)
	}
	if err := l.Do(l.Timeout, chromedp.KeyEvent("s", chromedp.KeyModifiers(chromedp.ModifierCtrl))); err != nil {
		return fmt.Errorf("saving: %w", err)
	}
	// The save command lists the checkpoints, then makes one: two requests.
	return l.WaitJS(l.Timeout, `!`+dirty+` && window.hwCk >= 2`, `(() => 'checkpoint requests ' + window.hwCk + ', ' + `+notebookState+`)()`)
}

// RestartKernel restarts the kernel of the notebook in front (Kernel >
// Restart Kernel…, then Restart in the dialog) and waits until the kernel
// has left the idle state and come back to it.
func (l *Lab) RestartKernel() error {
	watch := `(() => { const k = ` + current + `.querySelector('.jp-Notebook-ExecutionIndicator');
		window.hwSeen = [];
		window.hwObs?.disconnect();
		window.hwObs = new MutationObserver(() => window.hwSeen.push(k.dataset.status));
		window.hwObs.observe(k, {attributes: true, attributeFilter: ['data-status']});
		return true })()`
	if _, err := Eval[bool](l.Tab, 10*time.Second, watch); err != nil {
		return err
	}
	if err := l.menu("Kernel", "kernelmenu:restart"); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := l.click(css(`.jp-Dialog .jp-Dialog-button.jp-mod-accept`), input.MouseButtonLeft, 1); err != nil {
		return fmt.Errorf("confirming the restart: %w", err)
	}
	done := `(() => window.hwSeen.some(s => s !== 'idle') && ` + kernelIdle + `)()`
	return l.WaitJS(l.Timeout, done, `(() => 'seen ' + window.hwSeen.join(','))()`)
}

// CloseAll closes every document tab (File > Close All Tabs), discarding
// unsaved changes when asked (opening a notebook records its kernel's
// details in its metadata, which marks it changed).
func (l *Lab) CloseAll() error {
	if err := l.menu("File", "application:close-all"); err != nil {
		return err
	}
	discard := css(`.jp-Dialog .jp-Dialog-button.jp-mod-warn`)
	deadline := time.Now().Add(l.Timeout)
	for {
		state, err := Eval[string](l.Tab, 5*time.Second, `(() => `+discard+` ? 'ask' : document.querySelector('.jp-NotebookPanel') ? 'open' : 'closed')()`)
		switch {
		case err == nil && state == "closed":
			return nil
		case err == nil && state == "ask":
			// Mark this dialog: the next document's may come right after.
			if _, err := Eval[bool](l.Tab, 10*time.Second, `(() => { document.querySelector('.jp-Dialog').dataset.hwSeen = '1'; return true })()`); err != nil {
				return err
			}
			if err := l.click(discard, input.MouseButtonLeft, 1); err != nil {
				return fmt.Errorf("discarding changes: %w", err)
			}
			if err := l.WaitJS(l.Timeout, `!document.querySelector('.jp-Dialog[data-hw-seen]')`, ""); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("tabs still open after %s: %w", l.Timeout, err)
			}
			return fmt.Errorf("tabs still open after %s (%s)", l.Timeout, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DismissNews answers JupyterLab's question about news notifications
// (No), as a user does once after the first start; it waits up to wait for
// the question.
func (l *Lab) DismissNews(wait time.Duration) error {
	no := `document.querySelector('.jp-toast-buttonBar button[title="No"]')`
	if err := l.WaitJS(wait, `!!`+no, ""); err != nil {
		return nil // not asked
	}
	if err := l.click(no, input.MouseButtonLeft, 1); err != nil {
		return fmt.Errorf("answering the news question: %w", err)
	}
	return l.WaitJS(l.Timeout, `!`+no, "")
}

// Screenshot saves what the tab shows as a PNG.
func (l *Lab) Screenshot(path string) error {
	png, err := chromedp.Run(l.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		return fmt.Errorf("taking a screenshot: %w", err)
	}
	return os.WriteFile(path, png, 0o644)
}

// ErrNoDownload means the browser started no download (the server refused it).
var ErrNoDownload = errors.New("no download")

// Download is a download the browser made.
type Download struct {
	Started  time.Time
	Bytes    int64
	Elapsed  time.Duration
	Complete bool
	// State is the browser's last word on it ("completed", "canceled", or
	// "inProgress" when the test cancelled it at its limit).
	State string
	// Samples are the received bytes every 250 ms after Started.
	Samples []int64
	File    string
}

// TailRate is the rate in bytes/s over the last d.
func (d Download) TailRate(w time.Duration) float64 {
	return Transfer{Bytes: d.Bytes, Elapsed: d.Elapsed, Samples: d.Samples}.TailRate(w)
}

// DownloadFile downloads name from the file browser (right-click,
// Download) and follows the download for at most limit. A download still
// running then is measured, whileRunning (when not nil) is called while it
// goes on, and it is cancelled. File is the saved file's path.
func (l *Lab) DownloadFile(name string, limit time.Duration, whileRunning func() error) (Download, error) {
	ctx, cancel := context.WithCancel(l.ctx)
	defer cancel()
	begins := chromedp.BrowserEvents(ctx, browser.DownloadWillBegin)
	progress := chromedp.BrowserEvents(ctx, browser.DownloadProgress)
	if err := l.click(dirItem(name), input.MouseButtonRight, 1); err != nil {
		return Download{}, fmt.Errorf("opening the context menu of %s: %w", name, err)
	}
	d := Download{Started: time.Now()}
	if err := l.click(css(`.lm-Menu-item[data-command="filebrowser:download"]`), input.MouseButtonLeft, 1); err != nil {
		return d, fmt.Errorf("clicking Download: %w", err)
	}
	var guid string
	// A download the server refuses may never begin: wait a bounded time.
	bctx, bcancel := context.WithTimeout(ctx, l.Timeout)
	defer bcancel()
	stop := context.AfterFunc(bctx, cancel)
	for ev, err := range begins {
		if err != nil {
			break
		}
		if ev.SuggestedFilename == name {
			guid = ev.GUID
			break
		}
	}
	if !stop() || guid == "" {
		return d, fmt.Errorf("%w: no download of %s began within %s", ErrNoDownload, name, l.Timeout)
	}
	var mu sync.Mutex
	var received int64
	state := browser.DownloadProgressStateInProgress
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev, err := range progress {
			if err != nil {
				return
			}
			if ev.GUID != guid {
				continue
			}
			mu.Lock()
			received, state = int64(ev.ReceivedBytes), ev.State
			mu.Unlock()
			if ev.State != browser.DownloadProgressStateInProgress {
				return
			}
		}
	}()
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-tick.C:
			mu.Lock()
			d.Samples = append(d.Samples, received)
			mu.Unlock()
		case <-deadline.C:
			d.Elapsed = time.Since(d.Started)
			mu.Lock()
			d.Bytes, d.State = received, string(state)
			mu.Unlock()
			var werr error
			if whileRunning != nil {
				werr = whileRunning()
			}
			if _, err := chromedp.CallBrowser(l.ctx, browser.CancelDownload, browser.CancelDownloadParams{GUID: guid, BrowserContextID: l.contextID}); err != nil {
				return d, fmt.Errorf("cancelling the download: %w", err)
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
			d.File = filepath.Join(l.Downloads, guid)
			return d, werr
		}
	}
	d.Elapsed = time.Since(d.Started)
	mu.Lock()
	d.Bytes, d.Complete, d.State = received, state == browser.DownloadProgressStateCompleted, string(state)
	mu.Unlock()
	d.File = filepath.Join(l.Downloads, guid)
	return d, nil
}
