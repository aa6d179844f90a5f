package warden

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/tcshape"
)

// Files in HUBWARDEN_STATE_DIR.
const (
	// DetectedFile holds what start-up found out about the kernel by
	// trying (Detected).
	DetectedFile = "detected.json"
	// BackendFile holds the iptables backend chosen for the pod (kept by
	// package xtables).
	BackendFile = "iptables-backend"
	// lockFile is the xtables lock of the legacy tools.
	lockFile = "xtables.lock"
)

// Detected is what start-up found out by changing the kernel (a probe
// device, a probe table) or by being refused: remembered, so that a
// restarted sidecar plans the same and check never has to try again.
type Detected struct {
	// Gate is how the pod budget is held (it is "none" when the kernel
	// refused both gates).
	Gate demotion.Gate `json:"pod_gate,omitempty"`
	// Leaves is the leaf qdisc kind the kernel offered.
	Leaves tcshape.LeafKind `json:"leaves,omitempty"`
	// HashlimitRefused records that the kernel refused the interactive
	// classification's hashlimit match: the demoted flows peers opened
	// share the slow class's served leaf, the others its bulk leaf.
	HashlimitRefused bool `json:"hashlimit_refused,omitempty"`
}

// loadDetected reads what an earlier start-up recorded in dir; the zero
// value when nothing is recorded.
func loadDetected(dir string) (Detected, error) {
	var d Detected
	b, err := os.ReadFile(filepath.Join(dir, DetectedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return d, err
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("%s: %w", filepath.Join(dir, DetectedFile), err)
	}
	switch d.Gate {
	case "", demotion.GateQuota, demotion.GateRecent, demotion.GateNone:
	default:
		return d, fmt.Errorf("%s: unknown pod gate %q", filepath.Join(dir, DetectedFile), d.Gate)
	}
	switch d.Leaves {
	case "", tcshape.LeafFQ, tcshape.LeafFIFO:
	default:
		return d, fmt.Errorf("%s: unknown leaf kind %q", filepath.Join(dir, DetectedFile), d.Leaves)
	}
	return d, nil
}

// saveDetected records d in dir (atomically: a crash leaves the old file or
// the new one).
func saveDetected(dir string, d Detected) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating HUBWARDEN_STATE_DIR: %w", err)
	}
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, DetectedFile+".*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, DetectedFile)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording what start-up detected: %w", err)
	}
	return nil
}
