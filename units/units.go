// Package units parses and prints the byte sizes and rates that hubwarden's
// configuration uses ("64MiB", "8mbit", "1MB/s").
//
// Sizes and rates are stored in bytes and bytes per second. Units that mean
// different things to different tools are refused rather than guessed: tc reads
// "kbps" as kilobytes per second, most people read it as kilobits, so hubwarden
// accepts neither and asks for "kbit" or "kB/s".
package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes.
type Size uint64

// Common sizes.
const (
	Byte Size = 1
	KiB       = 1024 * Byte
	MiB       = 1024 * KiB
	GiB       = 1024 * MiB
	TiB       = 1024 * GiB
)

var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// ambiguous lists suffixes that are refused because tools disagree on them.
var ambiguous = map[string]string{
	"k": "kB or KiB", "m": "MB or MiB", "g": "GB or GiB", "t": "TB or TiB",
	"kbps": "kbit or kB/s", "mbps": "mbit or MB/s", "gbps": "gbit or GB/s", "bps": "bit or B/s",
}

// ParseSize parses a size such as "64MiB", "1.5GB", "4096" or "512 KiB".
// Decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units are accepted;
// bare "k", "M", "G" are refused as ambiguous.
func ParseSize(s string) (Size, error) {
	num, unit, err := split(s)
	if err != nil {
		return 0, err
	}
	u := strings.ToLower(unit)
	mult, ok := sizeUnits[u]
	if !ok {
		if alt, amb := ambiguous[u]; amb {
			return 0, fmt.Errorf("size %q: unit %q is ambiguous, write %s", s, unit, alt)
		}
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, kB, MB, GB, KiB, MiB, GiB)", s, unit)
	}
	v, err := scale(num, mult)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return Size(v), nil
}

// String prints the size in the largest binary unit that divides it exactly,
// so that ParseSize(s.String()) == s.
func (s Size) String() string {
	for _, u := range []struct {
		n    string
		size Size
	}{{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if s >= u.size && s%u.size == 0 {
			return strconv.FormatUint(uint64(s/u.size), 10) + u.n
		}
	}
	return strconv.FormatUint(uint64(s), 10) + "B"
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Rate is a rate in bytes per second.
type Rate uint64

var bitUnits = map[string]float64{
	"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
}

// ParseRate parses a rate given either in bits per second ("8mbit", "1.5gbit",
// "100kbit") or in bytes per second ("1MB/s", "512KiB/s"). The result is in
// bytes per second; bit rates that are not a whole number of bytes are rounded
// down, and a non-zero rate never rounds to zero.
func ParseRate(s string) (Rate, error) {
	num, unit, err := split(s)
	if err != nil {
		return 0, err
	}
	u := strings.ToLower(unit)
	if mult, ok := bitUnits[u]; ok {
		v, err := scale(num, mult)
		if err != nil {
			return 0, fmt.Errorf("rate %q: %w", s, err)
		}
		b := v / 8
		if b == 0 && v > 0 {
			b = 1
		}
		return Rate(b), nil
	}
	if per, ok := strings.CutSuffix(u, "/s"); ok {
		mult, ok := sizeUnits[per]
		if !ok || per == "" {
			return 0, fmt.Errorf("rate %q: unknown unit %q (use B/s, kB/s, MB/s, KiB/s, MiB/s)", s, unit)
		}
		v, err := scale(num, mult)
		if err != nil {
			return 0, fmt.Errorf("rate %q: %w", s, err)
		}
		return Rate(v), nil
	}
	if alt, amb := ambiguous[u]; amb {
		return 0, fmt.Errorf("rate %q: unit %q is ambiguous, write %s", s, unit, alt)
	}
	if unit == "" {
		return 0, fmt.Errorf("rate %q: a unit is required (for example 8mbit or 1MB/s)", s)
	}
	return 0, fmt.Errorf("rate %q: unknown unit %q (use bit, kbit, mbit, gbit or B/s, kB/s, MB/s, MiB/s)", s, unit)
}

// BitsPerSecond returns the rate in bits per second, saturating at MaxUint64.
func (r Rate) BitsPerSecond() uint64 {
	if uint64(r) > math.MaxUint64/8 {
		return math.MaxUint64
	}
	return uint64(r) * 8
}

// String prints the rate as tc would read it: bits per second with the largest
// decimal prefix that divides it exactly.
func (r Rate) String() string {
	bits := r.BitsPerSecond()
	for _, u := range []struct {
		n string
		v uint64
	}{{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if bits >= u.v && bits%u.v == 0 {
			return strconv.FormatUint(bits/u.v, 10) + u.n
		}
	}
	return strconv.FormatUint(bits, 10) + "bit"
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := ParseRate(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

var errEmpty = errors.New("empty value")

// split separates "1.5 MiB" into "1.5" and "MiB".
func split(s string) (num, unit string, err error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return "", "", errEmpty
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	if i == 0 {
		return "", "", fmt.Errorf("%q does not start with a number", s)
	}
	return t[:i], strings.TrimSpace(t[i:]), nil
}

// scale multiplies a decimal number by a unit, exactly for integers and
// refusing results that do not fit in 64 bits.
func scale(num string, mult float64) (uint64, error) {
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("number %q is out of range", num)
		}
		m := uint64(mult)
		if m != 0 && n > math.MaxUint64/m {
			return 0, errors.New("value is out of range")
		}
		return n * m, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || strings.Count(num, ".") > 1 {
		return 0, fmt.Errorf("number %q is malformed", num)
	}
	v := f * mult
	if v >= math.MaxUint64 || math.IsNaN(v) {
		return 0, errors.New("value is out of range")
	}
	return uint64(v), nil
}
