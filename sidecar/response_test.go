package sidecar

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// MustLine checks that line is one line of valid UTF-8 JSON ending in "\n" and
// returns it decoded.
func MustLine(tb testing.TB, line []byte) map[string]any {
	tb.Helper()
	if !bytes.HasSuffix(line, []byte("\n")) {
		tb.Fatalf("line %q does not end in \\n", line)
	}
	if got := bytes.Count(line, []byte("\n")); got != 1 {
		tb.Fatalf("line %q has %d newlines, want 1", line, got)
	}
	if bytes.Contains(line, []byte("\r")) {
		tb.Fatalf("line %q has a raw CR", line)
	}
	if !utf8.Valid(line) {
		tb.Fatalf("line %q is not valid UTF-8", line)
	}
	body := bytes.TrimSuffix(line, []byte("\n"))
	if !json.Valid(body) {
		tb.Fatalf("line %s is not valid JSON", body)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		tb.Fatalf("line %s: %v", body, err)
	}
	return m
}

// MustRawField returns the raw JSON of one top-level field of a line.
func MustRawField(tb testing.TB, line []byte, field string) string {
	tb.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(bytes.TrimSuffix(line, []byte("\n")), &m); err != nil {
		tb.Fatalf("line %s: %v", line, err)
	}
	raw, ok := m[field]
	if !ok {
		tb.Fatalf("line %s has no %q", line, field)
	}
	return string(raw)
}

func TestAppendResult(t *testing.T) {
	meta := Meta{Upstream: "llm", Model: "phi3", Attempts: 2, Fallback: "", Breaker: "closed", LatencyMs: 12.7}
	tests := []struct {
		name    string
		id      []byte
		r       *Result
		want    map[string]any // expected top-level fields, decoded
		rawBody string         // expected raw "body" field, "" = not checked
	}{
		{
			name: "ok with a JSON body",
			id:   []byte(`"r1"`),
			r: &Result{Status: 200, Header: http.Header{"Content-Type": {"application/json"}},
				Body: []byte("{\n  \"a\": [1,\n    2],\n\t\"b\": {\"c\": \"x y\"}\n}\n"), Meta: meta, hasMeta: true},
			want: map[string]any{
				"id": "r1", "ok": true, "status": 200.0,
				"headers": map[string]any{"Content-Type": "application/json"},
				"body":    map[string]any{"a": []any{1.0, 2.0}, "b": map[string]any{"c": "x y"}},
				"meta": map[string]any{"upstream": "llm", "model": "phi3", "attempts": 2.0, "cached": false,
					"stale": false, "coalesced": false, "fallback": "", "breaker": "closed", "latency_ms": 12.7},
			},
			rawBody: `{"a":[1,2],"b":{"c":"x y"}}`,
		},
		{
			name: "ok with a JSON array body",
			id:   []byte(`7`),
			r:    &Result{Status: 200, Body: []byte("[1,\r\n 2]")},
			want: map[string]any{"id": 7.0, "ok": true, "status": 200.0,
				"headers": map[string]any{}, "body": []any{1.0, 2.0}},
			rawBody: `[1,2]`,
		},
		{
			name: "ok with a text body",
			id:   []byte(`"t"`),
			r:    &Result{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("hello\r\n\"world\"\t\\ é")},
			want: map[string]any{"id": "t", "ok": true, "status": 200.0,
				"headers": map[string]any{"Content-Type": "text/plain"}, "body": "hello\r\n\"world\"\t\\ é"},
		},
		{
			name: "body with invalid UTF-8",
			id:   []byte(`"u"`),
			r:    &Result{Status: 200, Body: []byte("ab\xffcd")},
			want: map[string]any{"id": "u", "ok": true, "status": 200.0,
				"headers": map[string]any{}, "body": "ab\uFFFDcd"},
		},
		{
			name: "JSON-looking body with invalid UTF-8",
			id:   []byte(`"u2"`),
			r:    &Result{Status: 200, Body: []byte("{\"a\":\"\xff\"}")},
			want: map[string]any{"id": "u2", "ok": true, "status": 200.0,
				"headers": map[string]any{}, "body": "{\"a\":\"\uFFFD\"}"},
		},
		{
			name: "empty body",
			id:   []byte(`"e"`),
			r:    &Result{Status: 204},
			want: map[string]any{"id": "e", "ok": true, "status": 204.0,
				"headers": map[string]any{}, "body": ""},
		},
		{
			name: "failure with status",
			id:   []byte(`"f"`),
			r: &Result{Status: 503, Header: http.Header{"Retry-After": {"5"}}, Body: []byte(`{"error":"busy"}`),
				Err: &Error{Code: CodeUpstreamStatus, Message: "upstream answered 503", Retryable: true}, Meta: meta, hasMeta: true},
			want: map[string]any{
				"id": "f", "ok": false,
				"error":   map[string]any{"code": "upstream_status", "message": "upstream answered 503", "retryable": true},
				"status":  503.0,
				"headers": map[string]any{"Retry-After": "5"},
				"body":    map[string]any{"error": "busy"},
				"meta": map[string]any{"upstream": "llm", "model": "phi3", "attempts": 2.0, "cached": false,
					"stale": false, "coalesced": false, "fallback": "", "breaker": "closed", "latency_ms": 12.7},
			},
		},
		{
			name: "failure without an upstream answer",
			id:   []byte(`"g"`),
			r:    &Result{Err: Errorf(CodeTimeout, "deadline passed"), Meta: meta, hasMeta: true},
			want: map[string]any{
				"id": "g", "ok": false,
				"error": map[string]any{"code": "timeout", "message": "deadline passed", "retryable": true},
				"meta": map[string]any{"upstream": "llm", "model": "phi3", "attempts": 2.0, "cached": false,
					"stale": false, "coalesced": false, "fallback": "", "breaker": "closed", "latency_ms": 12.7},
			},
		},
		{
			name: "ping answer",
			id:   []byte(`1`),
			r:    &Result{},
			want: map[string]any{"id": 1.0, "ok": true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte(`{"id":0,"chunk":"x"}` + "\n")
			out := appendResult(bytes.Clone(prefix), tt.id, tt.r)
			if !bytes.HasPrefix(out, prefix) {
				t.Fatalf("output %q lost the prefix %q", out, prefix)
			}
			line := out[len(prefix):]
			got := MustLine(t, line)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v\nline %s", got, tt.want, line)
			}
			if got, want := MustRawField(t, line, "id"), string(tt.id); got != want {
				t.Errorf("raw id = %s, want %s", got, want)
			}
			if tt.rawBody != "" {
				if got := MustRawField(t, line, "body"); got != tt.rawBody {
					t.Errorf("raw body = %s, want %s", got, tt.rawBody)
				}
			}
		})
	}
}

func TestAppendError(t *testing.T) {
	tests := []struct {
		name  string
		id    []byte
		err   *Error
		rawID string
		want  map[string]any
	}{
		{"null id", nil, Errorf(CodeBadRequest, "request must be a JSON object"), "null",
			map[string]any{"id": nil, "ok": false, "error": map[string]any{
				"code": "bad_request", "message": "request must be a JSON object", "retryable": false}}},
		{"string id, message to escape", []byte(`"x"`), Errorf(CodeBadRequest, "unknown op %q\n", "a\\b"), `"x"`,
			map[string]any{"id": "x", "ok": false, "error": map[string]any{
				"code": "bad_request", "message": "unknown op \"a\\\\b\"\n", "retryable": false}}},
		{"number id, retryable", []byte(`-1.5e3`), Errorf(CodeOverloaded, "too many requests in flight"), `-1.5e3`,
			map[string]any{"id": -1500.0, "ok": false, "error": map[string]any{
				"code": "overloaded", "message": "too many requests in flight", "retryable": true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := AppendError(nil, tt.id, tt.err)
			got := MustLine(t, line)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v\nline %s", got, tt.want, line)
			}
			if got, want := MustRawField(t, line, "id"), tt.rawID; got != want {
				t.Errorf("raw id = %s, want %s", got, want)
			}
		})
	}
}

func TestAppendString(t *testing.T) {
	tests := []struct {
		name, in, want string
		decoded        string // what a JSON decoder reads back
	}{
		{"plain", "hello", `"hello"`, "hello"},
		{"empty", "", `""`, ""},
		{"quote", `a"b`, `"a\"b"`, `a"b`},
		{"backslash", `a\b`, `"a\\b"`, `a\b`},
		{"newline CR tab", "a\nb\rc\td", `"a\nb\rc\td"`, "a\nb\rc\td"},
		{"other control characters", "\x00\x01\x08\x0c\x1f", `"\u0000\u0001\u0008\u000c\u001f"`, "\x00\x01\x08\x0c\x1f"},
		{"DEL kept", "a\x7fb", "\"a\x7fb\"", "a\x7fb"},
		{"multi-byte UTF-8 kept", "héllo 世界 🎉", `"héllo 世界 🎉"`, "héllo 世界 🎉"},
		{"invalid byte", "a\xffb", `"a\ufffdb"`, "a\uFFFDb"},
		{"truncated multi-byte at the end", "a\xe4\xb8", `"a\ufffd\ufffd"`, "a\uFFFD\uFFFD"},
		{"lone continuation byte", "\x80x", `"\ufffdx"`, "\uFFFDx"},
		{"surrogate half encoded", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`, "\uFFFD\uFFFD\uFFFD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := appendString([]byte("x"), tt.in)
			if got, want := string(out), "x"+tt.want; got != want {
				t.Errorf("appendString(%q) = %s, want %s", tt.in, got, want)
			}
			raw := out[1:]
			if !utf8.Valid(raw) || !json.Valid(raw) {
				t.Fatalf("appendString(%q) = %q, not valid UTF-8 JSON", tt.in, raw)
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatalf("decode %s: %v", raw, err)
			}
			if s != tt.decoded {
				t.Errorf("decoded %q, want %q", s, tt.decoded)
			}
		})
	}
}

func TestAppendHeaders(t *testing.T) {
	h := http.Header{
		"Set-Cookie":   {"a=1", "b=2", "c=3"},
		"Vary":         {"Accept", "Accept-Encoding"},
		"Content-Type": {"application/json"},
		"X-Quote":      {`say "hi"`},
		"X-Empty":      {},
	}
	line := appendResult(nil, []byte("1"), &Result{Status: 200, Header: h})
	got := MustLine(t, line)["headers"]
	want := map[string]any{
		"Set-Cookie":   "a=1, b=2, c=3",
		"Vary":         "Accept, Accept-Encoding",
		"Content-Type": "application/json",
		"X-Quote":      `say "hi"`,
		"X-Empty":      "",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("headers = %#v, want %#v", got, want)
	}
	if raw := string(appendHeaders(nil, h)); !strings.HasPrefix(raw, `{"Content-Type":`) {
		t.Errorf("appendHeaders = %s, want names sorted", raw)
	}
}

func BenchmarkAppendResult(b *testing.B) {
	r := &Result{
		Status: 200,
		Header: http.Header{"Content-Type": {"application/json"}, "Date": {"Thu, 02 Jan 2025 03:04:05 GMT"}},
		Body: []byte(`{"model":"phi3","created_at":"2025-01-02T03:04:05Z",` +
			`"message":{"role":"assistant","content":"Hello there, how are you?"},"done":true}`),
		Meta:    Meta{Upstream: "llm", Model: "phi3", Attempts: 1, Breaker: "closed", LatencyMs: 12.5},
		hasMeta: true,
	}
	id := []byte(`"req-0001"`)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendResult(buf[:0], id, r)
	}
}
