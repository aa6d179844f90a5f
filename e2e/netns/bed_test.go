//go:build e2e && linux

package netns

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// newBed builds a bed for the test and registers its removal (t.Cleanup
// also runs when the test panics).
func newBed(t *testing.T) *Bed {
	t.Helper()
	return newBedWith(t, Options{})
}

// newBedWith is newBed with options (Logf is the test's).
func newBedWith(t *testing.T, opts Options) *Bed {
	t.Helper()
	if err := Preflight(); err != nil {
		t.Skipf("e2e bed unavailable: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts.Logf = t.Logf
	b, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("building the bed: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("removing the bed: %v", err)
		}
		if !t.Failed() {
			os.RemoveAll(b.Dir)
		} else {
			t.Logf("logs kept in %s", b.Dir)
		}
	})
	t.Logf("bed up in %s: %v", b.Timings["setup"].Round(time.Millisecond), b.Timings)
	return b
}

// TestE2EBed checks the bed itself: hub up, login, spawn, tree, contents,
// download, kernel, IPv6, for both pods.
func TestE2EBed(t *testing.T) {
	b := newBed(t)
	ctx := context.Background()
	for _, u := range []string{b.BareUser, b.WardenUser} {
		d, err := b.StartServer(ctx, u, 60*time.Second)
		if err != nil {
			t.Fatalf("spawning %s: %v", u, err)
		}
		t.Logf("%s: server ready in %s", u, d.Round(time.Millisecond))
		c := b.NewClient(u)
		if err := c.Login(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.OpenLab(ctx); err != nil {
			t.Fatal(err)
		}
		nb := notebookJSON("print(6*7)")
		if _, err := c.Do(ctx, "PUT", c.UserURL()+"/api/contents/small.ipynb", nb, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Do(ctx, "GET", c.UserURL()+"/api/contents/small.ipynb", nil, nil); err != nil {
			t.Fatal(err)
		}
		tr := c.Download(ctx, c.UserURL()+"/files/big.bin", 30*time.Second, nil)
		if tr.Err != nil || tr.Status != 200 || tr.Bytes != 128<<20 {
			t.Fatalf("download: %+v", tr.Err)
		}
		t.Logf("%s: big.bin %d bytes in %s (%.0f MB/s)", u, tr.Bytes, tr.Elapsed.Round(time.Millisecond), tr.Rate()/1e6)
		k, err := c.StartKernel(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r, err := k.Execute(ctx, "print(6*7)", 30*time.Second)
		if err != nil || strings.TrimSpace(r.Stdout) != "42" {
			t.Fatalf("kernel: %+v %v", r, err)
		}
		t.Logf("%s: kernel print(6*7) -> %q in %s", u, r.Stdout, r.Elapsed)
		// The user's processes run with no_new_privs, as z2jh's default
		// (allowPrivilegeEscalation: false) makes Kubernetes start them.
		r, err = k.Execute(ctx, `print([l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs:")][0])`, 30*time.Second)
		if err != nil || strings.TrimSpace(r.Stdout) != "1" {
			t.Fatalf("kernel NoNewPrivs: %+v %v", r, err)
		}
		if u == b.BareUser {
			testHungKernel(t, c, k)
			continue
		}
		k.Close(ctx)
	}
	c6 := b.NewClient("")
	if _, err := c6.Do(ctx, "GET", "http://["+ProxyIP6+"]:8000/hub/api", nil, nil); err != nil {
		t.Fatalf("hub over IPv6: %v", err)
	}
}

// hangOnceCell sleeps through its timeout the first time it runs in the
// user's home, the way a frozen kernel keeps a cell running, and prints
// "second" the next time.
const hangOnceCell = `import os, time
if not os.path.exists(".hwe2e-hang"):
    open(".hwe2e-hang", "w").close()
    time.sleep(600)
os.remove(".hwe2e-hang")
print("second")`

// testHungKernel checks the proof's execute: a cell still running at its
// timeout, on a kernel the server answers for, is run again in a new kernel
// and the retry is noted; a cell that fails otherwise is not retried.
func testHungKernel(t *testing.T, c *Client, k *Kernel) {
	ctx := context.Background()
	p := &proof{rep: &Report{}}
	s := &side{name: "without", c: c, k: k}
	r, err := p.execute(t, s, "bed", hangOnceCell, 5*time.Second)
	defer s.k.Close(ctx)
	if err != nil || strings.TrimSpace(r.Stdout) != "second" {
		t.Fatalf("the hung cell, run again: %+v %v", r, err)
	}
	if s.k == k {
		t.Error("the hung kernel was not replaced")
	}
	if len(p.rep.notes) != 1 || !strings.Contains(p.rep.notes[0], "the kernel hung") || !strings.Contains(p.rep.notes[0], `"busy"`) {
		t.Errorf("the retry's note: %q", p.rep.notes)
	}
	t.Logf("hung kernel: %s", p.rep.notes)
	// A cell that raises is the cell's fault: returned, not retried.
	k2 := s.k
	r, err = p.execute(t, s, "bed", "raise ValueError('x')", 30*time.Second)
	if err != nil || r.Status != "error" || s.k != k2 || len(p.rep.notes) != 1 {
		t.Errorf("a raising cell: %+v %v (kernel replaced: %v, notes %d)", r, err, s.k != k2, len(p.rep.notes))
	}
}

func notebookJSON(src string) []byte {
	return []byte(`{"type":"notebook","content":{"cells":[{"id":"c0","cell_type":"code","execution_count":null,"metadata":{},"outputs":[],"source":` +
		quote(src) + `}],"metadata":{"kernelspec":{"display_name":"Python 3","language":"python","name":"python3"}},"nbformat":4,"nbformat_minor":5}}`)
}
