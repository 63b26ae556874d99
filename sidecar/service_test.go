package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/policy"
)

// answer is a decoded answer line.
type answer struct {
	ID     json.RawMessage `json:"id"`
	OK     bool            `json:"ok"`
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
	Error  *struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		Retryable bool   `json:"retryable"`
	} `json:"error"`
	Meta struct {
		Attempts int    `json:"attempts"`
		Breaker  string `json:"breaker"`
		Model    string `json:"model"`
	} `json:"meta"`
}

func (a answer) code() string {
	if a.Error == nil {
		return "ok"
	}
	return a.Error.Code
}

// fastPolicy is the default policy with backoffs short enough for tests.
func fastPolicy() policy.Policy {
	p := policy.Default()
	p.BackoffInitial = time.Millisecond
	p.BackoffMax = 2 * time.Millisecond
	return p
}

func MustService(tb testing.TB, url string, p policy.Policy, hooks Hooks) *Service {
	tb.Helper()
	s, err := New(Options{
		Upstreams:        []UpstreamConfig{{Name: "up", URL: url, Policy: p}},
		BasePolicy:       p,
		MaxInflight:      64,
		MaxResponseBytes: 1 << 20,
		AdminUIDs:        []uint32{0},
		Logger:           zerolog.Nop(),
		Hooks:            hooks,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func MustHandle(tb testing.TB, s *Service, line string) answer {
	tb.Helper()
	out := s.Handle(context.Background(), Peer{Known: true}, []byte(line), nil, nil)
	var a answer
	if err := json.Unmarshal(out, &a); err != nil {
		tb.Fatalf("answer %q is not JSON: %v", out, err)
	}
	return a
}

type countHooks struct {
	nopHooks
	exhausted atomic.Int64
}

func (h *countHooks) RetryBudgetExhausted(string) { h.exhausted.Add(1) }

func TestCallRetriesTransientNotPermanent(t *testing.T) {
	for _, tc := range []struct {
		status       int
		wantAttempts int
		wantCode     string
	}{
		{200, 1, "ok"},
		{302, 1, "ok"},
		{404, 1, "upstream_status"},
		{422, 1, "upstream_status"},
		{408, 4, "upstream_status"},
		{429, 4, "upstream_status"},
		{500, 4, "upstream_status"},
		{503, 4, "upstream_status"},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			var hits atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				w.WriteHeader(tc.status)
			}))
			defer up.Close()
			s := MustService(t, up.URL, fastPolicy(), nil)
			a := MustHandle(t, s, `{"id":1,"upstream":"up"}`)
			if got := a.code(); got != tc.wantCode {
				t.Errorf("code: got %s, want %s", got, tc.wantCode)
			}
			if a.Meta.Attempts != tc.wantAttempts || int(hits.Load()) != tc.wantAttempts {
				t.Errorf("attempts: got meta %d, upstream %d; want %d", a.Meta.Attempts, hits.Load(), tc.wantAttempts)
			}
			if a.Status != tc.status {
				t.Errorf("status: got %d, want %d", a.Status, tc.status)
			}
		})
	}
}

func TestCallStopsRetryingWhenBreakerOpens(t *testing.T) {
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(503)
	}))
	defer up.Close()
	p := fastPolicy()
	p.Retries = 10
	p.BreakerFailures = 3
	s := MustService(t, up.URL, p, nil)
	a := MustHandle(t, s, `{"id":1,"upstream":"up","model":"m"}`)
	if a.Meta.Attempts != 3 || hits.Load() != 3 {
		t.Errorf("attempts: got meta %d, upstream %d; want 3", a.Meta.Attempts, hits.Load())
	}
	if a.Meta.Breaker != "open" {
		t.Errorf("breaker: got %q, want open", a.Meta.Breaker)
	}
	a = MustHandle(t, s, `{"id":2,"upstream":"up","model":"m"}`)
	if a.code() != "circuit_open" || !a.Error.Retryable || a.Meta.Attempts != 0 || hits.Load() != 3 {
		t.Errorf("second call: got %s retryable %v attempts %d upstream hits %d; want circuit_open, true, 0, 3",
			a.code(), a.Error != nil && a.Error.Retryable, a.Meta.Attempts, hits.Load())
	}
	// Another model has its own breaker.
	a = MustHandle(t, s, `{"id":3,"upstream":"up","body":{"model":"other"},"retries":0}`)
	if a.code() != "upstream_status" || a.Meta.Model != "other" {
		t.Errorf("other model: got %s model %q, want upstream_status, other", a.code(), a.Meta.Model)
	}
}

func TestCallRetryBudget(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) > 4 {
			<-release
		}
		w.WriteHeader(503)
	}))
	defer up.Close()
	defer close(release)
	p := fastPolicy()
	p.Retries = 1
	p.RetryBudget = 0
	p.RetryBudgetMin = 2
	p.BreakerFailures = 1000
	hooks := &countHooks{}
	s := MustService(t, up.URL, p, hooks)
	// Four concurrent requests fail once each; only two may retry at a time,
	// and the retries hang, so the other two are refused by the budget.
	var wg sync.WaitGroup
	answers := make([]answer, 4)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = MustHandle(t, s, fmt.Sprintf(`{"id":%d,"upstream":"up","timeout_ms":3000}`, i))
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for hooks.exhausted.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	release <- struct{}{}
	release <- struct{}{}
	wg.Wait()
	if got := hooks.exhausted.Load(); got != 2 {
		t.Errorf("budget exhausted: got %d, want 2", got)
	}
	one := 0
	for _, a := range answers {
		if a.Meta.Attempts == 1 {
			one++
		}
	}
	if one != 2 {
		t.Errorf("requests refused a retry: got %d, want 2", one)
	}
}

func TestCallDeadlineCutsRetryAfter(t *testing.T) {
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(429)
	}))
	defer up.Close()
	s := MustService(t, up.URL, fastPolicy(), nil)
	start := time.Now()
	a := MustHandle(t, s, `{"id":1,"upstream":"up","timeout_ms":2000}`)
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Errorf("answered after %s; want at once, long before the 2s deadline", el)
	}
	if a.code() != "upstream_status" || a.Status != 429 || hits.Load() != 1 {
		t.Errorf("got %s status %d hits %d; want upstream_status 429 1", a.code(), a.Status, hits.Load())
	}
}

func TestCallResponseTooLarge(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 2<<20))
	}))
	defer up.Close()
	s := MustService(t, up.URL, fastPolicy(), nil)
	if a := MustHandle(t, s, `{"id":1,"upstream":"up"}`); a.code() != "too_large" || a.Meta.Attempts != 1 {
		t.Errorf("got %s attempts %d, want too_large 1", a.code(), a.Meta.Attempts)
	}
}

func TestOverloaded(t *testing.T) {
	hold := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-hold
	}))
	defer up.Close()
	defer close(hold)
	s := MustService(t, up.URL, fastPolicy(), nil)
	s.opts.MaxInflight = 1
	go s.Handle(context.Background(), Peer{}, []byte(`{"id":1,"upstream":"up"}`), nil, nil)
	for s.Inflight() == 0 {
		time.Sleep(time.Millisecond)
	}
	a := MustHandle(t, s, `{"id":2,"upstream":"up"}`)
	if a.code() != "overloaded" || !a.Error.Retryable {
		t.Errorf("got %s, want overloaded, retryable", a.code())
	}
}

func TestAdminForbidden(t *testing.T) {
	s := MustService(t, "http://127.0.0.1:1", fastPolicy(), nil)
	out := s.Handle(context.Background(), Peer{UID: 4242, Known: true}, []byte(`{"id":"r","op":"reset"}`), nil, nil)
	var a answer
	if err := json.Unmarshal(out, &a); err != nil || a.code() != "forbidden" || string(a.ID) != `"r"` {
		t.Errorf("got %s, want forbidden with id \"r\"", out)
	}
}

func TestConfigure(t *testing.T) {
	s := MustService(t, "http://127.0.0.1:1", fastPolicy(), nil)
	a := MustHandle(t, s, `{"id":1,"op":"configure","upstream":"up","policy":{"retries":0,"nope":1}}`)
	if a.code() != "bad_request" {
		t.Fatalf("unknown key: got %s, want bad_request", a.code())
	}
	if got := s.upstream("up").pol.Load().Retries; got != 3 {
		t.Errorf("invalid configure changed retries to %d", got)
	}
	a = MustHandle(t, s, `{"id":2,"op":"configure","upstream":"up","policy":{"retries":0,"timeout":"2s"}}`)
	if a.code() != "ok" {
		t.Fatalf("configure: got %s", a.code())
	}
	if p := s.upstream("up").pol.Load(); p.Retries != 0 || p.Timeout != 2*time.Second {
		t.Errorf("policy: got retries %d timeout %s, want 0, 2s", p.Retries, p.Timeout)
	}
	a = MustHandle(t, s, `{"id":3,"op":"configure","upstream":"new","url":"http://127.0.0.1:2","policy":{"fallback":["up"]}}`)
	if a.code() != "ok" || s.upstream("new") == nil {
		t.Errorf("new upstream: got %s", a.code())
	}
	if a = MustHandle(t, s, `{"id":4,"op":"configure","upstream":"x","url":"http://127.0.0.1:2","policy":{"fallback":["ghost"]}}`); a.code() != "bad_request" {
		t.Errorf("unknown fallback: got %s, want bad_request", a.code())
	}
}

// benchLine is a typical LLM call line.
var benchLine = []byte(`{"id":"r1","upstream":"up","path":"/api/generate","body":{"model":"phi3","prompt":"Where is the dragon?","stream":false}}`)

// fakeLLM is an httptest upstream answering like Ollama's /api/generate; it
// counts the calls it gets.
func fakeLLM(tb testing.TB, calls *atomic.Int64) *httptest.Server {
	tb.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"model":"phi3","response":"The dragon sleeps under the mountain.","done":true}`)
	}))
	tb.Cleanup(up.Close)
	return up
}

// runHandleBench sends benchLine through s from parallel goroutines.
func runHandleBench(b *testing.B, s *Service) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 0, 1024)
		for pb.Next() {
			out := s.Handle(context.Background(), Peer{}, benchLine, buf[:0], nil)
			if len(out) < 20 || string(out[:19]) != `{"id":"r1","ok":tru` {
				b.Fatalf("answer %s", out)
			}
		}
	})
	b.StopTimer()
}

// BenchmarkHandleCall measures the whole in-process path of one call: decode
// the request line, run it through breaker and retrier to an httptest
// upstream over loopback, encode the answer.
func BenchmarkHandleCall(b *testing.B) {
	var calls atomic.Int64
	up := fakeLLM(b, &calls)
	s := MustService(b, up.URL, policy.Default(), nil)
	runHandleBench(b, s)
}

// TestCallBodyFraming reads answers framed every way HTTP/1.1 allows, at and
// past the response size limit (1 MiB in MustService).
func TestCallBodyFraming(t *testing.T) {
	const limit = 1 << 20
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := 0
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		body := make([]byte, n)
		for i := range body {
			body[i] = 'a'
		}
		switch r.URL.Path {
		case "/length":
			w.Header().Set("Content-Length", fmt.Sprint(n))
			w.Write(body)
		case "/chunked":
			for len(body) > 0 {
				k := min(len(body), 70000)
				w.Write(body[:k])
				w.(http.Flusher).Flush()
				body = body[k:]
			}
		case "/head":
			w.Header().Set("Content-Length", "42")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer up.Close()
	s := MustService(t, up.URL, fastPolicy(), nil)
	tests := []struct {
		line, code string
		bodyLen    int // of the answer's body string, when ok
	}{
		{`{"id":1,"upstream":"up","method":"GET","path":"/length?n=5"}`, "ok", 5},
		{`{"id":2,"upstream":"up","method":"GET","path":"/length?n=0"}`, "ok", 0},
		{fmt.Sprintf(`{"id":3,"upstream":"up","method":"GET","path":"/length?n=%d"}`, limit), "ok", limit},
		{fmt.Sprintf(`{"id":4,"upstream":"up","method":"GET","path":"/length?n=%d"}`, limit+1), "too_large", 0},
		{fmt.Sprintf(`{"id":5,"upstream":"up","method":"GET","path":"/chunked?n=%d"}`, limit), "ok", limit},
		{fmt.Sprintf(`{"id":6,"upstream":"up","method":"GET","path":"/chunked?n=%d"}`, limit+1), "too_large", 0},
		{`{"id":7,"upstream":"up","method":"HEAD","path":"/head"}`, "ok", 0},
		{`{"id":8,"upstream":"up","method":"GET","path":"/empty"}`, "ok", 0},
	}
	for _, tt := range tests {
		a := MustHandle(t, s, tt.line)
		if a.code() != tt.code {
			t.Errorf("%s: got %s (%+v), want %s", tt.line, a.code(), a.Error, tt.code)
			continue
		}
		if tt.code != "ok" {
			continue
		}
		var body string
		if len(a.Body) > 0 {
			if err := json.Unmarshal(a.Body, &body); err != nil {
				t.Errorf("%s: body %.80s is not a string", tt.line, a.Body)
			}
		}
		if len(body) != tt.bodyLen {
			t.Errorf("%s: body of %d bytes, want %d", tt.line, len(body), tt.bodyLen)
		}
	}
}

// BenchmarkHandleCallRetried is a call whose first attempt gets a 503 and
// whose retry succeeds, with no backoff: the retry path's own cost (retrier,
// breaker twice, budget, classification) on top of two exchanges.
func BenchmarkHandleCallRetried(b *testing.B) {
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if hits.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"model":"phi3","response":"The dragon sleeps under the mountain.","done":true}`)
	}))
	b.Cleanup(up.Close)
	p := policy.Default()
	p.BackoffInitial, p.BackoffMax, p.Jitter = 0, 0, 0
	p.RetryBudget, p.RetryBudgetMin = 1, 1000
	p.BreakerFailures = 1 << 30
	s := MustService(b, up.URL, p, nil)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		out := s.Handle(context.Background(), Peer{}, benchLine, buf[:0], nil)
		if !bytes.Contains(out, []byte(`"attempts":2`)) {
			b.Fatalf("answer %s", out)
		}
	}
}
