package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestCallJSONBody checks a plain call: the request body reaches the
// upstream as JSON, the upstream's JSON answer comes back as an object, and
// meta describes the call (SPEC 1).
func TestCallJSONBody(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})

	sent := `{"hello":"world","n":1,"list":[1,2]}`
	r := f.Call(t, callReq("up", "/ok", "body", json.RawMessage(sent)))
	wantOK(t, r)
	wantStatus(t, r, 200)
	e := decodeEcho(t, r)
	if e.Method != "POST" {
		t.Errorf("method (default): got %q, want POST", e.Method)
	}
	if !jsonEqual(t, e.Body, sent) {
		t.Errorf("upstream got body %q, want %s", e.Body, sent)
	}
	if got := e.Headers["Content-Type"]; !strings.HasPrefix(got, "application/json") {
		t.Errorf("upstream got Content-Type %q, want application/json", got)
	}
	if got, _ := r.Header("Content-Type"); !strings.HasPrefix(got, "application/json") {
		t.Errorf("answer header Content-Type: got %q, want application/json", got)
	}
	if r.Meta == nil {
		t.Fatalf("meta missing (answer %s)", r.Raw)
	}
	if r.Meta.Upstream != "up" || r.Meta.Attempts != 1 || r.Meta.Cached || r.Meta.Breaker != "closed" {
		t.Errorf("meta: got %+v, want upstream up, attempts 1, cached false, breaker closed", *r.Meta)
	}
	wantHits(t, u, "/ok", 1)
}

// TestCallJSONBodyKinds checks that body may be any JSON value (SPEC 1).
func TestCallJSONBodyKinds(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	for _, body := range []string{`[1,2,3]`, `"text"`, `42`, `{}`} {
		t.Run(body, func(t *testing.T) {
			r := f.Call(t, callReq("up", "/ok", "body", json.RawMessage(body)))
			wantOK(t, r)
			if got := decodeEcho(t, r).Body; !jsonEqual(t, got, body) {
				t.Errorf("upstream got body %q, want %s", got, body)
			}
		})
	}
}

// TestCallTextBody checks that a body that is not JSON comes back as a
// string, with the upstream's headers (SPEC 1).
func TestCallTextBody(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	r := f.Call(t, callReq("up", "/text", "method", "GET"))
	wantOK(t, r)
	wantStatus(t, r, 200)
	var s string
	if err := json.Unmarshal(r.Body, &s); err != nil || s != "hello, fender" {
		t.Errorf("body: got %s, want the string \"hello, fender\"", r.Body)
	}
	if got, _ := r.Header("Content-Type"); !strings.HasPrefix(got, "text/plain") {
		t.Errorf("header Content-Type: got %q, want text/plain", got)
	}
}

// TestCallResponseHeaders checks that upstream response headers come back in
// headers (SPEC 1).
func TestCallResponseHeaders(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	r := f.Call(t, callReq("up", "/ok"))
	wantOK(t, r)
	if got, ok := r.Header("X-Upstream"); got != "fake" {
		t.Errorf("header X-Upstream: got %q (present %v), want \"fake\" (answer %s)", got, ok, r.Raw)
	}
}

// TestCallForwardsHeaders checks that request headers are forwarded except
// Host, Content-Length and the hop-by-hop ones (SPEC 1).
func TestCallForwardsHeaders(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	headers := map[string]string{
		"X-Custom":            "v1",
		"Authorization":       "Bearer secret-token",
		"Host":                "evil.example",
		"Connection":          "X-Drop-Me",
		"X-Drop-Me":           "1",
		"Keep-Alive":          "timeout=5",
		"Proxy-Authorization": "Basic Zm9vOmJhcg==",
		"TE":                  "trailers",
		"Trailer":             "X-T",
		"Transfer-Encoding":   "chunked",
		"Upgrade":             "websocket",
		"Content-Length":      "999",
	}
	r := f.Call(t, callReq("up", "/ok", "headers", headers, "body_text", "abc"))
	wantOK(t, r)
	e := decodeEcho(t, r)
	for name, want := range map[string]string{"X-Custom": "v1", "Authorization": "Bearer secret-token"} {
		if got := e.Headers[name]; got != want {
			t.Errorf("upstream header %s: got %q, want %q", name, got, want)
		}
	}
	for _, name := range []string{"X-Drop-Me", "Keep-Alive", "Proxy-Authorization", "Te", "Trailer", "Upgrade"} {
		if got, ok := e.Headers[name]; ok {
			t.Errorf("upstream header %s: got %q, want it dropped", name, got)
		}
	}
	if got := e.Headers["Connection"]; strings.Contains(strings.ToLower(got), "x-drop-me") {
		t.Errorf("upstream header Connection: got %q, want it dropped", got)
	}
	if want := strings.TrimPrefix(u.URL, "http://"); e.Host != want {
		t.Errorf("upstream Host: got %q, want %q", e.Host, want)
	}
	if len(e.TransferEncoding) > 0 {
		t.Errorf("upstream Transfer-Encoding: got %v, want none", e.TransferEncoding)
	}
	if e.Body != "abc" || e.ContentLength != 3 {
		t.Errorf("upstream body: got %q with Content-Length %d, want \"abc\" with 3", e.Body, e.ContentLength)
	}
}

// TestCallMethodPathQuery checks that method, path and query are forwarded
// as given, and the default path is "/" (SPEC 1).
func TestCallMethodPathQuery(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	for _, tc := range []struct{ method, path, wantURI string }{
		{"PUT", "/ok/sub?x=1&y=a%20b", "/ok/sub?x=1&y=a%20b"},
		{"GET", "/ok?q=%2Fslash", "/ok?q=%2Fslash"},
		{"DELETE", "/ok/item/7", "/ok/item/7"},
		{"PATCH", "", "/"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			req := Req{"upstream": "up", "method": tc.method, "cache": "bypass"}
			if tc.path != "" {
				req["path"] = tc.path
			}
			r := f.Call(t, req)
			wantOK(t, r)
			e := decodeEcho(t, r)
			if e.Method != tc.method || e.URI != tc.wantURI {
				t.Errorf("upstream got %s %s, want %s %s", e.Method, e.URI, tc.method, tc.wantURI)
			}
		})
	}
}

// TestCallBodyText checks that body_text is sent raw, byte for byte (SPEC 1).
func TestCallBodyText(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	text := "line one\nline \"two\"\t{not json"
	r := f.Call(t, callReq("up", "/ok", "body_text", text, "headers", map[string]string{"Content-Type": "text/plain"}))
	wantOK(t, r)
	e := decodeEcho(t, r)
	if e.Body != text {
		t.Errorf("upstream got body %q, want %q", e.Body, text)
	}
	if got := e.Headers["Content-Type"]; got != "text/plain" {
		t.Errorf("upstream Content-Type: got %q, want the request's text/plain", got)
	}
}

// TestCallRedirectNotFollowed checks that a 302 is the answer, Location
// included, and the redirect is not followed (SPEC 1).
func TestCallRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	r := f.Call(t, callReq("up", "/redirect", "method", "GET"))
	wantOK(t, r)
	wantStatus(t, r, 302)
	if got, _ := r.Header("Location"); got != "/ok" {
		t.Errorf("header Location: got %q, want \"/ok\" (answer %s)", got, r.Raw)
	}
	wantAttempts(t, r, 1)
	wantHits(t, u, "/ok", 0)
}
