package ctwatch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// TxBytes returns a function that reads the bytes transmitted by every
// interface but loopback from a /proc/net/dev file: "/proc/net/dev" for the
// network namespace the process runs in (the sidecar shares the pod's), or
// "/proc/PID/net/dev" for that of another process. Use it as Options.Tx.
//
// The watcher reads it every millisecond, so the file is opened once and
// read again from offset 0 (one pread; the kernel regenerates the text): an
// open and close per reading cost several times more system time. The file
// is reopened after a failed read.
func TxBytes(path string) func() (uint64, error) {
	buf := make([]byte, 0, 4096)
	var f *os.File
	return func() (uint64, error) {
		if f == nil {
			var err error
			if f, err = os.Open(path); err != nil {
				return 0, fmt.Errorf("reading transmitted bytes: %w", err)
			}
		}
		buf = buf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err := f.ReadAt(buf[len(buf):cap(buf)], int64(len(buf)))
			buf = buf[:len(buf)+n]
			if errors.Is(err, io.EOF) || err == nil && n == 0 {
				break
			}
			if err != nil {
				f.Close()
				f = nil
				return 0, fmt.Errorf("reading transmitted bytes from %s: %w", path, err)
			}
		}
		tx, err := ParseNetDev(buf)
		if err != nil {
			return 0, fmt.Errorf("reading transmitted bytes from %s: %w", path, err)
		}
		return tx, nil
	}
}

var errNetDev = errors.New("not in /proc/net/dev format")

// ParseNetDev sums the transmitted bytes of every interface but lo in the
// text of /proc/net/dev.
func ParseNetDev(b []byte) (uint64, error) {
	var sum uint64
	lines := 0
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		name, rest, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		fields := bytes.Fields(rest)
		// 8 receive fields, then transmit bytes.
		if len(fields) < 9 {
			return 0, fmt.Errorf("%w: interface %q has %d fields", errNetDev, name, len(fields))
		}
		lines++
		if string(name) == "lo" {
			continue
		}
		v, err := strconv.ParseUint(string(fields[8]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: interface %q: %w", errNetDev, name, err)
		}
		sum += v
	}
	if lines == 0 {
		return 0, errNetDev
	}
	return sum, nil
}
