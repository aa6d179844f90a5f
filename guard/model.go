package guard

import (
	"bytes"
	"encoding/json"
	"errors"
)

// ValueKind is the JSON type of a value.
type ValueKind uint8

// Value kinds. KindAbsent: the object has no such key.
const (
	KindAbsent ValueKind = iota
	KindNull
	KindBool
	KindNumber
	KindString
	KindArray
	KindObject
)

func (k ValueKind) String() string {
	return [...]string{"absent", "null", "bool", "number", "string", "array", "object"}[k]
}

// errModel is returned for a body that is not one JSON object as a contents
// model is.
var errModel = errors.New("the answer is not a JSON object")

// errDuplicateKey: a model with a key twice could be read two ways.
var errDuplicateKey = errors.New("the answer has a key twice")

// modelScanner reads a contents model, a JSON object, as it streams past
// and finds what the guard decides on without holding the model in memory:
// the JSON type of the top-level "content" value (a notebook's is an
// object, a directory's an array, a file's a string, metadata's null) as
// soon as its first byte passes, and the top-level "type" and "format"
// strings. It tracks only the structure (strings, escapes, nesting); keys
// and the two strings it reads are decoded with encoding/json, so "\u0063"
// is "c" to it as to a browser. The model comes from the server, not the
// user; what the user controls (file names, notebook text) is inside JSON
// strings, which the scanner skips.
type modelScanner struct {
	state scanState
	err   error

	nest       int  // depth inside a value being skipped
	inString   bool // inside a string
	escaped    bool // the previous byte was a backslash inside a string
	capture    bool // collecting the current string (a key, or the value of "type"/"format")
	overflow   bool // the string being collected is longer than maxCaptured
	buf        []byte
	key        string
	seen       map[string]bool
	Content    ValueKind
	ContentSet bool   // the "content" key was read (its first byte passed)
	Type       string // the top-level "type" string, "" if absent or not a string
	Format     string
	// DoneAt is the offset in the stream of the object's closing brace,
	// -1 until it has passed.
	DoneAt int64
	off    int64 // bytes fed so far
}

func newModelScanner() *modelScanner { return &modelScanner{DoneAt: -1} }

type scanState uint8

const (
	scanBegin      scanState = iota // before the opening '{'
	scanKeyOrEnd                    // after '{': a key or '}'
	scanKey                         // after ',': a key
	scanInKey                       // inside a key string
	scanColon                       // after a key
	scanValue                       // after ':'
	scanInValue                     // skipping a value
	scanAfterValue                  // after a value: ',' or '}'
	scanDone                        // after the closing '}'
)

// maxCaptured bounds the keys and strings the scanner decodes: longer keys
// are none of the ones it looks for.
const maxCaptured = 256

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Write feeds the next bytes of the model. It never fails; Err reports.
func (s *modelScanner) Write(p []byte) (int, error) {
	for i := 0; i < len(p) && s.err == nil; i++ {
		if s.state == scanInValue && !s.capture {
			// Skip to the next byte that matters: most of a notebook is
			// inside strings (sources, base64 images), and most of the rest
			// is nested structure the scanner only counts.
			if j := s.skippable(p[i:]); j > 0 {
				i += j - 1
				continue
			}
		}
		s.step(p[i])
		if s.state == scanDone && s.DoneAt < 0 {
			s.DoneAt = s.off + int64(i)
		}
	}
	s.off += int64(len(p))
	return len(p), nil
}

// skippable returns how many leading bytes of p step would pass over
// without a change of state: inside a string up to a quote or a
// backslash, inside a nested value up to a quote or a bracket.
func (s *modelScanner) skippable(p []byte) int {
	switch {
	case s.inString && !s.escaped:
		q := bytes.IndexByte(p, '"')
		if q < 0 {
			q = len(p)
		}
		if b := bytes.IndexByte(p[:q], '\\'); b >= 0 {
			return b
		}
		return q
	case !s.inString && s.nest > 0:
		if j := bytes.IndexAny(p, "\"{}[]"); j >= 0 {
			return j
		}
		return len(p)
	}
	return 0
}

// Err returns the first structural problem found, if any.
func (s *modelScanner) Err() error { return s.err }

// Complete reports whether the whole object has been read.
func (s *modelScanner) Complete() bool { return s.state == scanDone && s.err == nil }

func (s *modelScanner) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

func (s *modelScanner) collect(c byte) {
	if !s.capture {
		return
	}
	if len(s.buf) >= maxCaptured {
		s.overflow = true
		return
	}
	s.buf = append(s.buf, c)
}

// decodeCaptured decodes the string collected in buf (with its quotes).
func (s *modelScanner) decodeCaptured() (string, bool) {
	if s.overflow {
		return "", false
	}
	var v string
	if err := json.Unmarshal(s.buf, &v); err != nil {
		return "", false
	}
	return v, true
}

func (s *modelScanner) step(c byte) {
	switch s.state {
	case scanBegin:
		if isJSONSpace(c) {
			return
		}
		if c != '{' {
			s.fail(errModel)
			return
		}
		s.state = scanKeyOrEnd
	case scanKeyOrEnd, scanKey:
		if isJSONSpace(c) {
			return
		}
		if c == '}' && s.state == scanKeyOrEnd {
			s.state = scanDone
			return
		}
		if c != '"' {
			s.fail(errModel)
			return
		}
		s.state = scanInKey
		s.capture, s.overflow = true, false
		s.buf = append(s.buf[:0], c)
	case scanInKey:
		s.collect(c)
		if s.escaped {
			s.escaped = false
			return
		}
		switch {
		case c == '\\':
			s.escaped = true
		case c == '"':
			k, ok := s.decodeCaptured()
			if !ok {
				k = "\x00long" // not a key the scanner looks for
			} else {
				if s.seen == nil {
					s.seen = map[string]bool{}
				}
				if s.seen[k] {
					s.fail(errDuplicateKey)
					return
				}
				s.seen[k] = true
			}
			s.key = k
			s.capture = false
			s.state = scanColon
		case c < 0x20:
			s.fail(errModel)
		}
	case scanColon:
		if isJSONSpace(c) {
			return
		}
		if c != ':' {
			s.fail(errModel)
			return
		}
		s.state = scanValue
	case scanValue:
		if isJSONSpace(c) {
			return
		}
		kind := KindNumber
		switch c {
		case '"':
			kind = KindString
		case '{':
			kind = KindObject
		case '[':
			kind = KindArray
		case 'n':
			kind = KindNull
		case 't', 'f':
			kind = KindBool
		case '}', ']', ',', ':':
			s.fail(errModel)
			return
		}
		if s.key == "content" {
			s.Content, s.ContentSet = kind, true
		}
		s.state = scanInValue
		s.nest, s.inString, s.escaped = 0, false, false
		switch kind {
		case KindString:
			s.inString = true
			s.capture = s.key == "type" || s.key == "format"
			s.overflow = false
			s.buf = append(s.buf[:0], c)
		case KindObject, KindArray:
			s.nest = 1
		}
	case scanInValue:
		s.skip(c)
	case scanAfterValue:
		if isJSONSpace(c) {
			return
		}
		switch c {
		case ',':
			s.state = scanKey
		case '}':
			s.state = scanDone
		default:
			s.fail(errModel)
		}
	case scanDone:
		if !isJSONSpace(c) {
			s.fail(errModel)
		}
	}
}

// skip advances over a value: a string, a nested object or array, or a
// literal (number, true, false, null).
func (s *modelScanner) skip(c byte) {
	if s.inString {
		s.collect(c)
		if s.escaped {
			s.escaped = false
			return
		}
		switch {
		case c == '\\':
			s.escaped = true
		case c == '"':
			s.inString = false
			if s.nest == 0 {
				s.endValue()
			}
		case c < 0x20:
			s.fail(errModel)
		}
		return
	}
	if s.nest > 0 {
		switch c {
		case '"':
			s.inString = true
		case '{', '[':
			s.nest++
		case '}', ']':
			s.nest--
			if s.nest == 0 {
				s.endValue()
			}
		}
		return
	}
	// A literal ends at the first byte that cannot be part of one; that
	// byte belongs to what follows the value.
	if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'E' {
		return
	}
	s.endValue()
	s.step(c)
}

// endValue finishes the value of the current key.
func (s *modelScanner) endValue() {
	if s.capture {
		if v, ok := s.decodeCaptured(); ok {
			switch s.key {
			case "type":
				s.Type = v
			case "format":
				s.Format = v
			}
		}
		s.capture = false
	}
	s.state = scanAfterValue
}
