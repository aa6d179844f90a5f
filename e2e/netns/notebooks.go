//go:build linux

package netns

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Files of the browser workload in each user's home.
const (
	// AnalysisNotebook has a text cell, a table and a matplotlib plot; part 1
	// runs all its cells, edits and saves it.
	AnalysisNotebook = "analysis.ipynb"
	// ReportNotebook is the "larger notebook": about 5 MB, most of it PNG
	// images in saved outputs.
	ReportNotebook = "big-report.ipynb"
	// DataDir is the folder part 1 browses in the file browser.
	DataDir = "data"
	// DataFiles is how many files DataDir holds.
	DataFiles = 24
)

// Bulk notebooks: the route the HTTP guard allows (a notebook through the
// contents API, under HUBWARDEN_GUARD_MAX_NOTEBOOK, 32 MiB by default) is
// the one the throttling parts measure in both pods. Each is one code cell
// whose saved output is random bytes as base64 image/png, as a notebook
// full of noise images stores them.
var bulkNotebooks = map[string]int{
	LargeNotebook: 28 << 20, // over the 16 MiB flow budget: part 2
	OverNotebook:  18 << 20, // just over the flow budget, completes in ~20 s: part 3
	// Under the flow budget: part 4's requests, each flow's answers
	// small enough that only the pod budget can stop them. (16 parallel
	// requests of a 28 MiB notebook take the server ~8 s of CPU before
	// the first byte: the bare pod then moves too little to compare.)
	ChunkNotebook: 8 << 20,
}

// The bulk notebooks' names.
const (
	LargeNotebook = "large.ipynb"
	OverNotebook  = "over.ipynb"
	ChunkNotebook = "chunk.ipynb"
)

// bulkNotebook returns a notebook of about size bytes on disk.
func bulkNotebook(size int, seed uint64) ([]byte, error) {
	raw := make([]byte, (size-1024)*3/4)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(raw)
	out := map[string]any{"output_type": "display_data", "metadata": map[string]any{},
		"data": map[string]any{"image/png": base64.StdEncoding.EncodeToString(raw), "text/plain": "<Figure>"}}
	return notebook([]any{cell(0, "code", "show_noise()", []any{out})})
}

// analysisCells are the cells of AnalysisNotebook: markdown, a table (an HTML
// table, what a DataFrame displays) and a real matplotlib plot.
var analysisCells = []struct{ kind, src string }{
	{"markdown", "# Monthly analysis\n\nA text cell, a table and a plot: what a notebook of regular work holds."},
	{"code", "import math\nrows = [(m, round(100 + 40 * math.sin(m / 2), 1), round(3 + math.cos(m), 2)) for m in range(1, 13)]\nprint(f\"{len(rows)} months\")"},
	{"code", "from IPython.display import HTML\nHTML(\"<table><tr><th>month</th><th>value</th><th>rate</th></tr>\" + \"\".join(f\"<tr><td>{m}</td><td>{v}</td><td>{r}</td></tr>\" for m, v, r in rows) + \"</table>\")"},
	{"code", "import numpy as np\nimport matplotlib.pyplot as plt\nx = np.linspace(0, 12, 400)\nfig, ax = plt.subplots(figsize=(7, 3.5))\nax.plot(x, 100 + 40 * np.sin(x / 2), label=\"value\")\nax.scatter([m for m, _, _ in rows], [v for _, v, _ in rows], color=\"C1\", label=\"months\")\nax.set_title(\"Monthly values\")\nax.legend()\nplt.show()"},
}

func cell(id int, kind, src string, outputs []any) map[string]any {
	c := map[string]any{"id": fmt.Sprintf("cell-%d", id), "cell_type": kind, "metadata": map[string]any{}, "source": src}
	if kind == "code" {
		c["execution_count"] = nil
		if outputs == nil {
			outputs = []any{}
		}
		c["outputs"] = outputs
	}
	return c
}

func notebook(cells []any) ([]byte, error) {
	return json.MarshalIndent(map[string]any{
		"cells": cells,
		"metadata": map[string]any{
			"kernelspec":    map[string]any{"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
			"language_info": map[string]any{"name": "python"},
		},
		"nbformat": 4, "nbformat_minor": 5,
	}, "", " ")
}

// reportImage is a 420x300 noisy heat map: noise does not compress, so the
// PNG costs on the wire what a dense plot does.
func reportImage(seed uint64) ([]byte, error) {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	img := image.NewNRGBA(image.Rect(0, 0, 420, 300))
	for y := range 300 {
		for x := range 420 {
			v := 0.5 + 0.35*math.Sin(float64(x)/37+float64(seed))*math.Cos(float64(y)/23) + 0.15*r.Float64()
			img.SetNRGBA(x, y, color.NRGBA{uint8(255 * v), uint8(255 * (1 - v) * r.Float64()), uint8(255 * (1 - v)), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeNotebooks writes the browser workload's notebooks and data folder
// into home, owned by the user.
func writeNotebooks(home string, uid, gid int) error {
	var cells []any
	for i, c := range analysisCells {
		cells = append(cells, cell(i, c.kind, c.src, nil))
	}
	analysis, err := notebook(cells)
	if err != nil {
		return err
	}
	cells = []any{cell(0, "markdown", "# Quarterly report\n\nTen figures with their saved outputs.", nil)}
	for i := range 10 {
		p, err := reportImage(uint64(i + 1))
		if err != nil {
			return fmt.Errorf("making report image %d: %w", i, err)
		}
		out := map[string]any{"output_type": "display_data", "metadata": map[string]any{},
			"data": map[string]any{"image/png": base64.StdEncoding.EncodeToString(p), "text/plain": fmt.Sprintf("<Figure %d>", i+1)}}
		cells = append(cells, cell(2*i+1, "markdown", fmt.Sprintf("## Figure %d\n\nRegion %d, all sites.", i+1, i+1), nil),
			cell(2*i+2, "code", fmt.Sprintf("show_figure(%d)", i+1), []any{out}))
	}
	report, err := notebook(cells)
	if err != nil {
		return err
	}
	files := map[string][]byte{AnalysisNotebook: analysis, ReportNotebook: report}
	seed := uint64(100)
	for name, size := range bulkNotebooks {
		seed++
		if files[name], err = bulkNotebook(size, seed); err != nil {
			return fmt.Errorf("making %s: %w", name, err)
		}
	}
	for i := range DataFiles {
		var b bytes.Buffer
		b.WriteString("site,month,value\n")
		for m := 1; m <= 12; m++ {
			fmt.Fprintf(&b, "site%02d,%d,%.2f\n", i, m, 100+40*math.Sin(float64(m+i)/2))
		}
		files[filepath.Join(DataDir, fmt.Sprintf("site%02d.csv", i))] = b.Bytes()
	}
	if err := os.MkdirAll(filepath.Join(home, DataDir), 0o755); err != nil {
		return fmt.Errorf("making %s: %w", DataDir, err)
	}
	if err := os.Chown(filepath.Join(home, DataDir), uid, gid); err != nil {
		return fmt.Errorf("chowning %s: %w", DataDir, err)
	}
	for name, data := range files {
		p := filepath.Join(home, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			return fmt.Errorf("chowning %s: %w", p, err)
		}
	}
	return nil
}
