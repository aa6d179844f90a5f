//go:build e2e && linux

package netns

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guardLines counts the guard's audit lines for a path (any decision).
func (p *proof) guardLines(path string) int {
	b, _ := os.ReadFile(filepath.Join(p.b.Dir, "hubwarden.log"))
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `"component":"guard"`) && strings.Contains(l, `"audit":"http"`) && strings.Contains(l, path) {
			n++
		}
	}
	return n
}

// get sends a GET with the user's cookies and returns the status and body.
func get(ctx context.Context, c *Client, u string) (int, []byte, error) {
	resp, err := c.Send(ctx, "GET", u, nil, nil)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// guardForms is part 2's other ways to take a file through the server, in
// both pods: what "Open in New Browser Tab" asks for (/files/), what
// "Export Notebook As HTML" asks for (/nbconvert/html/...?download=true),
// and a CSV renamed to .ipynb and opened as a notebook. The bare pod serves
// each; the guard refuses each, with an audit line, and no byte of the file
// reaches the client.
func (p *proof) guardForms(t *testing.T) {
	ctx := context.Background()
	csv := DataDir + "/site01.csv"
	home := func(u string) string { return filepath.Join("/home", u) }
	data, err := os.ReadFile(filepath.Join(home(p.bare.user), csv))
	if err != nil {
		t.Fatalf("reading the test data: %v", err)
	}
	firstLine := string(bytes.SplitN(data, []byte("\n"), 2)[0])
	forms := []struct {
		name, path, rule string
	}{
		{"open a CSV in a new browser tab: GET /files/" + csv, "/files/" + csv, "deny-files"},
		{"Export Notebook As HTML: GET /nbconvert/html/" + AnalysisNotebook + "?download=true", "/nbconvert/html/" + AnalysisNotebook + "?download=true", "deny-nbconvert"},
	}
	for _, f := range forms {
		bs, bb, berr := get(ctx, p.bare.c, p.bare.c.UserURL()+f.path)
		d0 := p.guardDenials(f.rule)
		ws, wb, werr := get(ctx, p.warden.c, p.warden.c.UserURL()+f.path)
		time.Sleep(200 * time.Millisecond) // the guard writes its line after the answer
		denied := p.guardDenials(f.rule) - d0
		ok := berr == nil && bs == 200 && werr == nil && ws == http.StatusForbidden && denied == 1 && !bytes.Contains(wb, []byte(firstLine))
		p.rep.Add(Row{"2 take a file (guard)", f.name, fmt.Sprintf("%d, %s", bs, HumanBytes(float64(len(bb)))),
			fmt.Sprintf("%d, %d B (guard: %d %s)", ws, len(wb), denied, f.rule), verdict(ok)})
		if !ok {
			t.Errorf("%s: without %d %v (%d B); with %d %v (%d B), %d %s lines; want 200 without and the guard's 403 with", f.name, bs, berr, len(bb), ws, werr, len(wb), denied, f.rule)
		}
	}

	// A CSV renamed to .ipynb (the contents API's rename, as the file
	// browser does it), then opened as a notebook.
	renamed := DataDir + "/site01.ipynb"
	var res [2]string
	var okSide [2]bool
	for i, s := range []*side{p.bare, p.warden} {
		body := fmt.Appendf(nil, `{"path": %q}`, renamed)
		if _, err := s.c.Do(ctx, "PATCH", s.c.UserURL()+"/api/contents/"+csv, body, nil); err != nil {
			t.Fatalf("%s: renaming %s: %v", s.name, csv, err)
		}
		lines0 := p.guardLines("site01.ipynb")
		st, b, err := get(ctx, s.c, s.c.UserURL()+"/api/contents/"+renamed+"?type=notebook&content=1")
		fs, fb, ferr := get(ctx, s.c, s.c.UserURL()+"/files/"+renamed)
		time.Sleep(200 * time.Millisecond)
		lines := p.guardLines("site01.ipynb") - lines0
		leaked := bytes.Contains(b, []byte(firstLine)) || bytes.Contains(fb, []byte(firstLine))
		res[i] = fmt.Sprintf("as a notebook %d (%d B), /files %d (%d B); file bytes in the answers: %v", st, len(b), fs, len(fb), leaked)
		if s == p.warden {
			res[i] += fmt.Sprintf("; guard lines %d", lines)
			okSide[i] = err == nil && ferr == nil && st >= 400 && fs == http.StatusForbidden && !leaked && lines == 2
		} else {
			okSide[i] = err == nil && ferr == nil && fs == 200 && bytes.Equal(fb, data)
		}
		if _, err := s.c.Do(ctx, "PATCH", s.c.UserURL()+"/api/contents/"+renamed, fmt.Appendf(nil, `{"path": %q}`, csv), nil); err != nil {
			t.Fatalf("%s: renaming back: %v", s.name, err)
		}
	}
	ok := okSide[0] && okSide[1]
	p.rep.Add(Row{"2 take a file (guard)", "a CSV renamed to .ipynb, opened as a notebook and through /files", res[0], res[1], verdict(ok)})
	if !ok {
		t.Errorf("renamed CSV: without: %s; with: %s", res[0], res[1])
	}
}
