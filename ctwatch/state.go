package ctwatch

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"
)

// StateFile is the name of the watcher's state file in STATE_DIR.
const StateFile = "ctwatch-pod-bucket.json"

// State is what survives a watcher restart: the pod bucket's level.
type State struct {
	Version   int       `json:"version"`
	PodTokens float64   `json:"pod_tokens"` // bytes, may be negative (debt)
	SavedAt   time.Time `json:"saved_at"`
}

// Level returns the pod bucket's level at now: the saved level refilled for
// the time since it was saved, capped at the budget. A save time in the
// future (a clock step) refills nothing.
func (s State) Level(now time.Time, budget, refill float64) float64 {
	dt := now.Sub(s.SavedAt).Seconds()
	if dt < 0 {
		dt = 0
	}
	return math.Min(budget, s.PodTokens+refill*dt)
}

// LoadState reads the state file in dir. A missing file is an error
// wrapping os.ErrNotExist.
func LoadState(dir string) (State, error) {
	path := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("reading watcher state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("decoding watcher state %s: %w", path, err)
	}
	if s.Version != 1 || math.IsNaN(s.PodTokens) || math.IsInf(s.PodTokens, 0) || s.SavedAt.IsZero() {
		return State{}, fmt.Errorf("decoding watcher state %s: unknown version or invalid values", path)
	}
	return s, nil
}

// SaveState writes the state file in dir atomically: a temporary file in the
// same directory, synced, then renamed over the old one.
func SaveState(dir string, s State) error {
	s.Version = 1
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding watcher state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, StateFile+".*")
	if err != nil {
		return fmt.Errorf("creating watcher state file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing watcher state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing watcher state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing watcher state %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("renaming watcher state into place: %w", err)
	}
	return nil
}
