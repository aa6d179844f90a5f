package guard

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// scanAll feeds b to a scanner in chunks of n bytes.
func scanAll(b []byte, n int) *modelScanner {
	s := newModelScanner()
	for len(b) > 0 {
		k := min(n, len(b))
		_, _ = s.Write(b[:k])
		b = b[k:]
	}
	return s
}

// jsonKind is encoding/json's view of a value's type.
func jsonKind(v any, present bool) ValueKind {
	if !present {
		return KindAbsent
	}
	switch v.(type) {
	case nil:
		return KindNull
	case bool:
		return KindBool
	case float64:
		return KindNumber
	case string:
		return KindString
	case []any:
		return KindArray
	}
	return KindObject
}

func TestModelScanner(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		content  ValueKind
		typ, fmt string
		err      bool
	}{
		{"notebook", `{"name":"a.ipynb","path":"a.ipynb","content":{"cells":[{"source":"}\"]{"}],"nbformat":4},"format":"json","type":"notebook"}`, KindObject, "notebook", "json", false},
		{"directory", `{"name":"","content":[{"name":"x","content":null,"type":"file"}],"format":"json","type":"directory"}`, KindArray, "directory", "json", false},
		{"file text", `{"content":"a,b,c\n1,2,3","format":"text","type":"file"}`, KindString, "file", "text", false},
		{"file base64", `{"content": "iVBORw0KGgo=", "format": "base64", "type": "file"}`, KindString, "file", "base64", false},
		{"metadata", `{"name":"d.csv","content":null,"format":null,"type":"file","size":12,"writable":true}`, KindNull, "file", "", false},
		{"no content", `{"name":"d.csv","type":"file"}`, KindAbsent, "file", "", false},
		{"spaces", " \n{ \"content\" :\t{ } , \"type\" : \"notebook\" , \"format\":\"json\" }\n", KindObject, "notebook", "json", false},
		{"escaped key", `{"\u0063ontent":"secret","type":"file"}`, KindString, "file", "", false},
		{"escaped type", `{"content":{},"type":"note\u0062ook","format":"json"}`, KindObject, "notebook", "json", false},
		{"type first", `{"type":"notebook","format":"json","content":{"cells":[]}}`, KindObject, "notebook", "json", false},
		{"numbers", `{"size":-1.5e+3,"last":1E9,"content":12,"type":"file"}`, KindNumber, "file", "", false},
		{"bool", `{"writable":true,"content":false,"type":"x"}`, KindBool, "x", "", false},
		{"nested type is not the type", `{"content":{"type":"file"},"type":"notebook","format":"json"}`, KindObject, "notebook", "json", false},
		{"string with braces", `{"name":"{\"content\":\"x\"}","content":null,"type":"file"}`, KindNull, "file", "", false},
		{"duplicate content", `{"content":{},"content":"raw","type":"notebook"}`, KindObject, "", "", true},
		{"duplicate type", `{"content":{},"type":"notebook","type":"file"}`, KindObject, "notebook", "", true},
		{"array", `[{"content":{}}]`, KindAbsent, "", "", true},
		{"string", `"content"`, KindAbsent, "", "", true},
		{"garbage after", `{"content":null} x`, KindNull, "", "", true},
		// Strings are skipped, not validated: the model comes from the server.
		{"control in string", "{\"content\":\"a\x01\",\"type\":\"file\"}", KindString, "file", "", false},
		{"missing colon", `{"content" null}`, KindAbsent, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []int{1, 2, 7, 1 << 20} {
				s := scanAll([]byte(tc.in), n)
				if (s.Err() != nil) != tc.err {
					t.Fatalf("chunk %d: err %v, want error %v", n, s.Err(), tc.err)
				}
				if tc.err {
					continue
				}
				if !s.Complete() {
					t.Fatalf("chunk %d: not complete", n)
				}
				if s.Content != tc.content || s.ContentSet != (tc.content != KindAbsent) || s.Type != tc.typ || s.Format != tc.fmt {
					t.Errorf("chunk %d: content %s set %v type %q format %q, want %s %q %q", n, s.Content, s.ContentSet, s.Type, s.Format, tc.content, tc.typ, tc.fmt)
				}
				if want := int64(strings.LastIndexByte(tc.in, '}')); s.DoneAt != want {
					t.Errorf("chunk %d: DoneAt %d, want %d", n, s.DoneAt, want)
				}
			}
		})
	}
}

// FuzzModelScanner: on any input the scanner does not panic; on a JSON
// object encoding/json accepts without duplicate keys, it finds the same
// content type, type and format strings as encoding/json, whatever the
// chunking.
func FuzzModelScanner(f *testing.F) {
	for _, s := range []string{
		`{"content":{"cells":[]},"format":"json","type":"notebook"}`,
		`{"content":[{"content":null}],"type":"directory"}`,
		`{"content":"x","type":"file"}`,
		`{"content":null}`, `{}`, `{"a":[1,{"b":"\"}"}],"content":true}`, `{"\u0074ype":"\u006eotebook"}`,
		`{"content":-0.5e-7}`, "{\"x\":\"\\\\\",\"content\":[]}", `{"type":1,"format":null}`, `x`, `{"content"`,
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		s := scanAll(in, int(chunk)+1)
		var m map[string]any
		if err := json.Unmarshal(in, &m); err != nil || m == nil {
			return
		}
		if hasDuplicateTopKeys(in) {
			if s.Err() == nil {
				t.Fatalf("%q: duplicate keys not reported", in)
			}
			return
		}
		if s.Err() != nil || !s.Complete() {
			t.Fatalf("%q: valid object: err %v complete %v", in, s.Err(), s.Complete())
		}
		c, ok := m["content"]
		if want := jsonKind(c, ok); s.Content != want || s.ContentSet != ok {
			t.Fatalf("%q: content %s, encoding/json %s", in, s.Content, want)
		}
		for key, got := range map[string]string{"type": s.Type, "format": s.Format} {
			want, _ := m[key].(string)
			if len(want) > maxCaptured-2 {
				continue // longer than the scanner reads; not a type it accepts anyway
			}
			if got != want {
				t.Fatalf("%q: %s %q, encoding/json %q", in, key, got, want)
			}
		}
	})
}

// hasDuplicateTopKeys reports whether a valid JSON object repeats a key at
// the top level (encoding/json keeps the last; the scanner refuses it).
func hasDuplicateTopKeys(in []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(in))
	if _, err := dec.Token(); err != nil {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return false
		}
		ks, _ := k.(string)
		if seen[ks] {
			return true
		}
		seen[ks] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return false
		}
	}
	return false
}

func BenchmarkModelScanner(b *testing.B) {
	// A notebook model of about 8 MiB: cells with source and base64 PNG outputs.
	var cells []string
	png := strings.Repeat("iVBORw0KGgoAAAANSUhEUgAAA", 4000)
	for i := range 80 {
		cells = append(cells, `{"cell_type":"code","source":"plt.plot(x, np.sin(x * `+strings.Repeat("1", i%5)+`))","outputs":[{"output_type":"display_data","data":{"image/png":"`+png+`"}}]}`)
	}
	model := []byte(`{"name":"p.ipynb","path":"p.ipynb","content":{"cells":[` + strings.Join(cells, ",") + `],"nbformat":4},"format":"json","type":"notebook"}`)
	b.SetBytes(int64(len(model)))
	b.ReportAllocs()
	for b.Loop() {
		s := scanAll(model, 64<<10)
		if !s.Complete() || s.Type != "notebook" {
			b.Fatal("scan failed")
		}
	}
}
