package sidecar

import (
	"context"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzDecode feeds arbitrary lines to the decoder and the answer encoder: no
// panic, and every answer is exactly one line of valid JSON whose id is the
// request's when the request decoded.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"id":1,"op":"ping"}`,
		`{"id":"r1","upstream":"llm","method":"GET","path":"/v1?x=1","headers":{"A":"b"},"body":{"model":"phi3","n":[1,2.5,{"x":null}]},"timeout_ms":100,"retries":0,"cache":"bypass","cache_ttl_ms":0,"stream":false}`,
		`{"id":1,"op":"configure","upstream":"x","url":"http://127.0.0.1:1","policy":{"retries":1}}`,
		`{"id":1,"upstream":"u","body_text":"raw"}`,
		`{"id":1,"op":"ping","op":"health"}`,
		`{"id":{"a":1}}`, `[1,2]`, `"x"`, `null`, `{`, `{"id":1,"path":"//evil"}`,
		"{\"id\":1,\"x\":\"\xff\"}", "{\"id\":1,\"h\":\"\x00\"}", `{"id":1e400}`, `{"id":-0.0e-5}`,
		`{"id":1,"retries":1e30}`, `{"id":1,"\u006fp":"ping"}`, `{ "id" : 1 , "op" : "ping" }`,
	} {
		f.Add([]byte(seed))
	}
	s, err := New(Options{Upstreams: []UpstreamConfig{}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, derr := Decode(line)
		var out []byte
		if derr != nil {
			if derr.Code != CodeBadRequest {
				t.Fatalf("decode error code %s, want bad_request", derr.Code)
			}
			out = AppendError(nil, req.ID, derr)
		} else {
			if !utf8.Valid(line) || !json.Valid(line) {
				t.Fatalf("decoded a line that is not valid UTF-8 JSON: %q", line)
			}
			if req.Op == OpCall {
				cacheKey("u", req, []string{"X-A"}) // must not panic
				if req.Body != nil && !json.Valid(req.Body) {
					t.Fatalf("body %q is not valid JSON", req.Body)
				}
			}
			// ping, health, stats and unknown upstreams answer without I/O.
			if req.Op != OpCall || req.Upstream != "" {
				out = s.Handle(context.Background(), Peer{}, line, nil, nil)
			}
		}
		if out == nil {
			return
		}
		if n := len(out); n == 0 || out[n-1] != '\n' || containsNewline(out[:n-1]) {
			t.Fatalf("answer is not one line: %q", out)
		}
		var a struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(out, &a); err != nil || !utf8.Valid(out) {
			t.Fatalf("answer %q is not valid JSON: %v", out, err)
		}
		if req.ID != nil && string(a.ID) != string(req.ID) {
			t.Fatalf("answer id %s, want %s", a.ID, req.ID)
		}
	})
}

func containsNewline(b []byte) bool {
	for _, c := range b {
		if c == '\n' {
			return true
		}
	}
	return false
}
