package socket

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzReadLine checks the framing against a plain split on "\n": every line
// within the limit comes back whole without its "\n" or "\r\n", every longer
// one is reported too large, and nothing is lost or invented.
func FuzzReadLine(f *testing.F) {
	for _, seed := range []string{"a\nb\n", "a\r\nb", "\n\n\n", "x\r\r\n", "", "\r", "no newline",
		string(bytes.Repeat([]byte("y"), 100)) + "\nshort\n"} {
		f.Add([]byte(seed), uint8(16))
	}
	f.Fuzz(func(t *testing.T, in []byte, max uint8) {
		limit := int(max%64) + 1
		br := bufio.NewReaderSize(bytes.NewReader(in), 16) // small, to cross buffer boundaries
		var want [][]byte
		parts := bytes.Split(in, []byte("\n"))
		if len(parts) > 0 && len(parts[len(parts)-1]) == 0 {
			parts = parts[:len(parts)-1] // the input ended with "\n"
		}
		for _, p := range parts {
			want = append(want, bytes.TrimSuffix(p, []byte("\r")))
		}
		for i := 0; ; i++ {
			line, tooLarge, err := readLine(br, limit)
			if err != nil && line == nil && !tooLarge {
				if i != len(want) {
					t.Fatalf("got %d lines, want %d (input %q)", i, len(want), in)
				}
				return
			}
			if i >= len(want) {
				t.Fatalf("line %d invented: %q", i, line)
			}
			if w := want[i]; len(w) > limit {
				if !tooLarge {
					t.Fatalf("line %d: %d bytes over the limit %d, not reported too large", i, len(w), limit)
				}
			} else if tooLarge || !bytes.Equal(line, w) {
				t.Fatalf("line %d: got %q (too large %v), want %q", i, line, tooLarge, w)
			}
			if err != nil {
				if i+1 != len(want) {
					t.Fatalf("ended after line %d, want %d lines", i, len(want))
				}
				return
			}
		}
	})
}
