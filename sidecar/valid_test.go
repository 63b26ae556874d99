package sidecar

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

var validSeeds = []string{
	`{}`, `[]`, `""`, `0`, `-0`, `1.5e-3`, `true`, `false`, `null`, ` {"a" : [1, {"b":null}], "c":"\u00e9\n"} `,
	`{"a":1,}`, `[1,]`, `{"a"}`, `{"a":}`, `{1:2}`, `01`, `1.`, `.5`, `1e`, `-`, `"\x"`, `"\u12"`, "\"\x01\"",
	`tru`, `nul`, `[1 2]`, `{"a":1 "b":2}`, `{}{}`, `"abc`, `[`, `]`, ``, ` `, `[[[]]]`, `{"a":{"b":{"c":[]}}}`,
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001),
}

func TestValidJSONAgreesWithEncodingJSON(t *testing.T) {
	for _, s := range validSeeds {
		if got, want := validJSON([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("validJSON(%.60q) = %v, encoding/json says %v", s, got, want)
		}
	}
}

// FuzzValidJSON checks validJSON against encoding/json.Valid on any input.
func FuzzValidJSON(f *testing.F) {
	for _, s := range validSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, encoding/json says %v", b, got, want)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	b.Run("ours", func(b *testing.B) {
		for b.Loop() {
			validJSON(benchLine)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			json.Valid(benchLine)
		}
	})
}

func TestAppendCompactAgreesWithEncodingJSON(t *testing.T) {
	for _, s := range validSeeds {
		checkCompact(t, []byte(s))
	}
}

// FuzzAppendCompact checks appendCompact against encoding/json.Compact on
// every valid JSON input.
func FuzzAppendCompact(f *testing.F) {
	for _, s := range validSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkCompact)
}

func checkCompact(t *testing.T, b []byte) {
	if !json.Valid(b) {
		return
	}
	var want bytes.Buffer
	if err := json.Compact(&want, b); err != nil {
		t.Fatalf("json.Compact(%q): %v", b, err)
	}
	if got := appendCompact([]byte("x"), b); string(got) != "x"+want.String() {
		t.Fatalf("appendCompact(%q) = %q, encoding/json.Compact gives %q", b, got[1:], want.Bytes())
	}
}
