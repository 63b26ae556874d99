package sidecar

import (
	"reflect"
	"sort"
	"testing"
)

// MustDecode decodes line and fails the test on a decode error.
func MustDecode(tb testing.TB, line string) *Request {
	tb.Helper()
	r, err := Decode([]byte(line))
	if err != nil {
		tb.Fatalf("Decode(%s) = %v, want no error", line, err)
	}
	if r == nil {
		tb.Fatalf("Decode(%s) = nil request", line)
	}
	return r
}

func TestDecodeValidCall(t *testing.T) {
	line := `{"id":"r1","op":"call","upstream":"llm","method":"GET","path":"/v1/chat?x=1&y=%20",` +
		`"headers":{"X-Tenant":"acme","Accept":"application/json"},"body":{"model":"llama","n":[1, 2]},` +
		`"model":"phi3","timeout_ms":1500,"retries":2,"cache":"refresh","cache_ttl_ms":0,"stream":true}`
	r := MustDecode(t, line)
	sort.Slice(r.Headers, func(i, j int) bool { return r.Headers[i][0] < r.Headers[j][0] })
	want := &Request{
		ID:        []byte(`"r1"`),
		Op:        OpCall,
		Upstream:  "llm",
		Method:    "GET",
		Path:      "/v1/chat?x=1&y=%20",
		Headers:   [][2]string{{"Accept", "application/json"}, {"X-Tenant", "acme"}},
		Body:      []byte(`{"model":"llama","n":[1,2]}`),
		Model:     "phi3",
		TimeoutMs: 1500,
		Retries:   2,
		Cache:     CacheRefresh,
		CacheTTL:  0,
		Stream:    true,
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
}

func TestDecodeHeaderValueWithTab(t *testing.T) {
	r := MustDecode(t, `{"id":1,"upstream":"u","headers":{"X-A":"a\tb é"}}`)
	if len(r.Headers) != 1 || r.Headers[0][1] != "a\tb é" {
		t.Errorf("headers %q, want the tab and the non-ASCII letter kept", r.Headers)
	}
}

func TestDecodeDefaults(t *testing.T) {
	r := MustDecode(t, `{"id":1,"upstream":"llm"}`)
	tests := []struct {
		name      string
		got, want any
	}{
		{"op", r.Op, OpCall},
		{"method", r.Method, "POST"},
		{"path", r.Path, "/"},
		{"cache", r.Cache, CacheUse},
		{"retries", r.Retries, -1},
		{"cache_ttl_ms", r.CacheTTL, int64(-1)},
		{"timeout_ms", r.TimeoutMs, int64(0)},
		{"stream", r.Stream, false},
		{"model", r.Model, ""},
		{"headers", len(r.Headers), 0},
		{"body", r.Body == nil, true},
		{"body_text", r.BodyText == nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
}

func TestDecodeAccepts(t *testing.T) {
	tests := []struct {
		name  string
		line  string
		check func(t *testing.T, r *Request)
	}{
		{"cache bypass", `{"id":1,"upstream":"u","cache":"bypass"}`, func(t *testing.T, r *Request) {
			if got, want := r.Cache, CacheBypass; got != want {
				t.Errorf("Cache = %q, want %q", got, want)
			}
		}},
		{"cache use", `{"id":1,"upstream":"u","cache":"use"}`, func(t *testing.T, r *Request) {
			if got, want := r.Cache, CacheUse; got != want {
				t.Errorf("Cache = %q, want %q", got, want)
			}
		}},
		{"retries 0", `{"id":1,"upstream":"u","retries":0}`, func(t *testing.T, r *Request) {
			if got, want := r.Retries, 0; got != want {
				t.Errorf("Retries = %d, want %d", got, want)
			}
		}},
		{"integral exponent", `{"id":1,"upstream":"u","timeout_ms":1e3}`, func(t *testing.T, r *Request) {
			if got, want := r.TimeoutMs, int64(1000); got != want {
				t.Errorf("TimeoutMs = %d, want %d", got, want)
			}
		}},
		{"stream false", `{"id":1,"upstream":"u","stream":false}`, func(t *testing.T, r *Request) {
			if r.Stream {
				t.Error("Stream = true, want false")
			}
		}},
		{"body_text kept", `{"id":1,"upstream":"u","body_text":"raw\ntext \u00e9"}`, func(t *testing.T, r *Request) {
			if r.BodyText == nil || *r.BodyText != "raw\ntext é" {
				t.Errorf("BodyText = %v, want %q", r.BodyText, "raw\ntext é")
			}
			if r.Body != nil {
				t.Errorf("Body = %s, want nil", r.Body)
			}
		}},
		{"body compacted", `{"id":1,"upstream":"u","body":{ "a" : 1 }}`, func(t *testing.T, r *Request) {
			if got, want := string(r.Body), `{"a":1}`; got != want {
				t.Errorf("Body = %s, want %s", got, want)
			}
		}},
		{"body compacted nested with tabs", "{\"id\":1,\"upstream\":\"u\",\"body\":{\t\"a\" : [ 1 ,\t{ \"b\" : \"x y\" } ] }}", func(t *testing.T, r *Request) {
			if got, want := string(r.Body), `{"a":[1,{"b":"x y"}]}`; got != want {
				t.Errorf("Body = %s, want %s", got, want)
			}
		}},
		{"body scalar", `{"id":1,"upstream":"u","body":"hi"}`, func(t *testing.T, r *Request) {
			if got, want := string(r.Body), `"hi"`; got != want {
				t.Errorf("Body = %s, want %s", got, want)
			}
		}},
		{"ping without upstream", `{"id":1,"op":"ping"}`, func(t *testing.T, r *Request) {
			if got, want := r.Op, OpPing; got != want {
				t.Errorf("Op = %q, want %q", got, want)
			}
		}},
		{"leading white space", ` 	{"id":1,"upstream":"u"}`, func(t *testing.T, r *Request) {
			if got, want := r.Upstream, "u"; got != want {
				t.Errorf("Upstream = %q, want %q", got, want)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, MustDecode(t, tt.line))
		})
	}
}

func TestDecodeID(t *testing.T) {
	tests := []struct {
		name, id string
	}{
		{"string", `"a"`},
		{"number", `7`},
		{"negative exponent float", `-1.5e3`},
		{"zero", `0`},
		{"string with escapes kept raw", `"a\u00e9\"b"`},
		{"empty string", `""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := MustDecode(t, `{"id":`+tt.id+`,"upstream":"llm"}`)
			if got, want := string(r.ID), tt.id; got != want {
				t.Errorf("ID = %s, want %s", got, want)
			}
		})
	}
}

func TestDecodeBadRequest(t *testing.T) {
	const noID = ""
	tests := []struct {
		name, line, id string // id "" = could not be read (null)
	}{
		{"not JSON", `hello`, noID},
		{"truncated JSON", `{"id":1,"upstream":"u"`, noID},
		{"empty line", ``, noID},
		{"array", `[{"id":1,"upstream":"u"}]`, noID},
		{"scalar number", `42`, noID},
		{"scalar string", `"x"`, noID},
		{"null", `null`, noID},
		{"missing id", `{"upstream":"u"}`, noID},
		{"id object", `{"id":{},"upstream":"u"}`, noID},
		{"id bool", `{"id":true,"upstream":"u"}`, noID},
		{"id null", `{"id":null,"upstream":"u"}`, noID},
		{"id array", `{"id":[1],"upstream":"u"}`, noID},
		{"unknown op", `{"id":1,"op":"nope","upstream":"u"}`, `1`},
		{"op not a string", `{"id":"a","op":1,"upstream":"u"}`, `"a"`},
		{"op null", `{"id":"a","op":null,"upstream":"u"}`, `"a"`},
		{"upstream missing for call", `{"id":2}`, `2`},
		{"upstream missing for explicit call", `{"id":2,"op":"call"}`, `2`},
		{"empty upstream", `{"id":2,"upstream":""}`, `2`},
		{"upstream not a string", `{"id":2,"upstream":5}`, `2`},
		{"path empty", `{"id":3,"upstream":"u","path":""}`, `3`},
		{"path relative", `{"id":3,"upstream":"u","path":"x"}`, `3`},
		{"path network-path reference", `{"id":3,"upstream":"u","path":"//evil.com/x"}`, `3`},
		{"path absolute URL", `{"id":3,"upstream":"u","path":"http://evil.com/x"}`, `3`},
		{"path with space", `{"id":3,"upstream":"u","path":"/a b"}`, `3`},
		{"path with CR LF", `{"id":3,"upstream":"u","path":"/a\r\n"}`, `3`},
		{"path not a string", `{"id":3,"upstream":"u","path":1}`, `3`},
		{"method empty", `{"id":4,"upstream":"u","method":""}`, `4`},
		{"method with space", `{"id":4,"upstream":"u","method":"GE T"}`, `4`},
		{"method not a string", `{"id":4,"upstream":"u","method":1}`, `4`},
		{"headers a string", `{"id":5,"upstream":"u","headers":"x"}`, `5`},
		{"headers an array", `{"id":5,"upstream":"u","headers":[]}`, `5`},
		{"headers null", `{"id":5,"upstream":"u","headers":null}`, `5`},
		{"header value a number", `{"id":5,"upstream":"u","headers":{"X-A":1}}`, `5`},
		{"header value null", `{"id":5,"upstream":"u","headers":{"X-A":null}}`, `5`},
		{"header name with space", `{"id":5,"upstream":"u","headers":{"X A":"1"}}`, `5`},
		{"header name with colon", `{"id":5,"upstream":"u","headers":{"X-A:":"1"}}`, `5`},
		{"header name empty", `{"id":5,"upstream":"u","headers":{"":"1"}}`, `5`},
		{"header value with CR LF", `{"id":5,"upstream":"u","headers":{"X-A":"a\r\nEvil: 1"}}`, `5`},
		{"header value with LF", `{"id":5,"upstream":"u","headers":{"X-A":"a\nb"}}`, `5`},
		{"header value with another control character", `{"id":5,"upstream":"u","headers":{"X-A":"a\u0001b"}}`, `5`},
		{"header value with DEL", `{"id":5,"upstream":"u","headers":{"X-A":"a\u007fb"}}`, `5`},
		{"body and body_text", `{"id":6,"upstream":"u","body":{},"body_text":"x"}`, `6`},
		{"body_text not a string", `{"id":6,"upstream":"u","body_text":1}`, `6`},
		{"timeout_ms 0", `{"id":7,"upstream":"u","timeout_ms":0}`, `7`},
		{"timeout_ms negative", `{"id":7,"upstream":"u","timeout_ms":-1}`, `7`},
		{"timeout_ms fraction", `{"id":7,"upstream":"u","timeout_ms":1.5}`, `7`},
		{"timeout_ms string", `{"id":7,"upstream":"u","timeout_ms":"10"}`, `7`},
		{"timeout_ms huge", `{"id":7,"upstream":"u","timeout_ms":1e30}`, `7`},
		{"timeout_ms null", `{"id":7,"upstream":"u","timeout_ms":null}`, `7`},
		{"retries negative", `{"id":8,"upstream":"u","retries":-1}`, `8`},
		{"retries fraction", `{"id":8,"upstream":"u","retries":2.5}`, `8`},
		{"retries null", `{"id":8,"upstream":"u","retries":null}`, `8`},
		{"retries string", `{"id":8,"upstream":"u","retries":"2"}`, `8`},
		{"cache unknown", `{"id":9,"upstream":"u","cache":"nope"}`, `9`},
		{"cache not a string", `{"id":9,"upstream":"u","cache":true}`, `9`},
		{"cache_ttl_ms negative", `{"id":9,"upstream":"u","cache_ttl_ms":-1}`, `9`},
		{"cache_ttl_ms fraction", `{"id":9,"upstream":"u","cache_ttl_ms":0.5}`, `9`},
		{"stream string", `{"id":10,"upstream":"u","stream":"yes"}`, `10`},
		{"stream number", `{"id":10,"upstream":"u","stream":1}`, `10`},
		{"model not a string", `{"id":11,"upstream":"u","model":5}`, `11`},
		{"invalid UTF-8 in a string value", "{\"id\":\"a\",\"upstream\":\"u\",\"path\":\"/\xff\"}", `"a"`},
		{"invalid UTF-8 in the body", "{\"id\":12,\"upstream\":\"u\",\"body\":{\"x\":\"\xc3\x28\"}}", `12`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Decode([]byte(tt.line))
			if err == nil {
				t.Fatalf("Decode(%s) = %+v, nil error; want bad_request", tt.line, r)
			}
			if got, want := err.Code, CodeBadRequest; got != want {
				t.Errorf("code = %s, want %s (%v)", got, want, err)
			}
			if err.Retryable {
				t.Errorf("retryable = true, want false")
			}
			if err.Message == "" {
				t.Errorf("message is empty, want a reason")
			}
			var id []byte
			if r != nil {
				id = r.ID
			}
			switch {
			case tt.id == noID && id != nil:
				t.Errorf("id = %s, want nil (answered as null)", id)
			case tt.id != noID && string(id) != tt.id:
				t.Errorf("id = %s, want %s", id, tt.id)
			}
		})
	}
}

func TestDecodeModel(t *testing.T) {
	tests := []struct {
		name, line, want string
	}{
		{"model field", `{"id":1,"upstream":"u","model":"phi3"}`, "phi3"},
		{"body.model", `{"id":1,"upstream":"u","body":{"model":"llama3","messages":[]}}`, "llama3"},
		{"body.model a number", `{"id":1,"upstream":"u","body":{"model":5}}`, ""},
		{"body.model an object", `{"id":1,"upstream":"u","body":{"model":{"name":"x"}}}`, ""},
		{"model wins over body.model", `{"id":1,"upstream":"u","model":"a","body":{"model":"b"}}`, "a"},
		{"model wins when body first", `{"id":1,"upstream":"u","body":{"model":"b"},"model":"a"}`, "a"},
		{"body an array", `{"id":1,"upstream":"u","body":[{"model":"x"}]}`, ""},
		{"body a string", `{"id":1,"upstream":"u","body":"model"}`, ""},
		{"body_text is not read", `{"id":1,"upstream":"u","body_text":"{\"model\":\"x\"}"}`, ""},
		{"no model", `{"id":1,"upstream":"u"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MustDecode(t, tt.line).Model; got != tt.want {
				t.Errorf("Model = %q, want %q", got, tt.want)
			}
		})
	}
}

var typicalLine = []byte(`{"id":"req-0001","op":"call","upstream":"llm","method":"POST","path":"/api/chat",` +
	`"headers":{"Content-Type":"application/json","X-Tenant":"acme"},` +
	`"body":{"model":"phi3","messages":[{"role":"user","content":"Say hello in five words."}],"stream":false},` +
	`"timeout_ms":5000,"retries":2}`)

func BenchmarkDecode(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(typicalLine)))
	for b.Loop() {
		if _, err := Decode(typicalLine); err != nil {
			b.Fatal(err)
		}
	}
}
