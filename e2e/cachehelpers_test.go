package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// modelUpstream is a fake LLM-like upstream for the cache, coalescing and
// fallback tests. Every request gets a fresh serial number n, and a 200
// answer carries it, so two answers with the same body come from the same
// upstream call. What a path does is set with Set; by default it answers
//
//	200 {"n":N,"method":M,"path":P,"model":body.model,"body":"raw body","pad":"xxx"}
//
// The upstream records each request it receives, so that a test can check
// what fender sent (a fallback's replaced model, for example).
type modelUpstream struct {
	*httptest.Server

	quit chan struct{}

	mu        sync.Mutex
	serial    int
	behaviors map[string]Behavior
	hits      map[string]int
	received  map[string][]Received
	cancelled int
	changed   chan struct{}
}

// Behavior is what a path of a modelUpstream does. The zero value answers
// 200 at once.
type Behavior struct {
	Status int           // the answer's status; 0 is 200
	Delay  time.Duration // wait this long before answering
	Gate   chan struct{} // wait until it is closed before answering
	Hang   bool          // never answer; wait for the request to end
	Reset  bool          // close the TCP connection with RST instead of answering
	Pad    int           // bytes of padding ("pad") in a 2xx answer
}

// Received is one request as the upstream saw it.
type Received struct {
	Method string
	Path   string
	Query  string
	Header http.Header
	Body   string
}

// Model is body.model of the request, "" when absent.
func (r Received) Model() string {
	var b struct {
		Model string `json:"model"`
	}
	_ = json.Unmarshal([]byte(r.Body), &b)
	return b.Model
}

// answerBody is the JSON a 2xx answer of a modelUpstream carries.
type answerBody struct {
	N      int    `json:"n"`
	Method string `json:"method"`
	Path   string `json:"path"`
	Model  string `json:"model"`
	Body   string `json:"body"`
	Pad    string `json:"pad,omitempty"`
}

func newModelUpstream(t testing.TB) *modelUpstream {
	t.Helper()
	u := &modelUpstream{
		quit:      make(chan struct{}),
		behaviors: make(map[string]Behavior),
		hits:      make(map[string]int),
		received:  make(map[string][]Received),
		changed:   make(chan struct{}),
	}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(func() {
		close(u.quit)
		u.Server.CloseClientConnections()
		u.Server.Close()
	})
	return u
}

// Set makes path behave as b from now on.
func (u *modelUpstream) Set(path string, b Behavior) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.behaviors[path] = b
}

func (u *modelUpstream) serve(w http.ResponseWriter, r *http.Request) {
	// Read the body first: net/http watches for a client that goes away
	// only once the body is consumed.
	body, _ := io.ReadAll(r.Body)
	rec := Received{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(body)}
	u.mu.Lock()
	u.serial++
	n := u.serial
	u.hits[rec.Path]++
	u.received[rec.Path] = append(u.received[rec.Path], rec)
	b := u.behaviors[rec.Path]
	close(u.changed)
	u.changed = make(chan struct{})
	u.mu.Unlock()

	if b.Gate != nil && !u.wait(r, b.Gate) {
		return
	}
	if b.Delay > 0 {
		elapsed := make(chan struct{})
		timer := time.AfterFunc(b.Delay, func() { close(elapsed) })
		defer timer.Stop()
		if !u.wait(r, elapsed) {
			return
		}
	}
	switch {
	case b.Hang:
		u.wait(r, nil)
		return
	case b.Reset:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		conn.Close()
		return
	}
	status := b.Status
	if status == 0 {
		status = http.StatusOK
	}
	if status < 200 || status > 299 {
		if status >= 300 && status < 400 {
			w.Header().Set("Location", "/elsewhere")
		}
		writeJSON(w, status, map[string]any{"n": n, "status": status, "error": "injected"})
		return
	}
	writeJSON(w, status, answerBody{
		N: n, Method: rec.Method, Path: rec.Path, Model: rec.Model(), Body: rec.Body,
		Pad: strings.Repeat("x", b.Pad),
	})
}

// wait blocks until ch delivers or is closed (true), or the request ends
// (false; counted as cancelled) or the upstream closes (false). A nil ch
// waits for the request to end.
func (u *modelUpstream) wait(r *http.Request, ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-r.Context().Done():
		u.mu.Lock()
		u.cancelled++
		u.mu.Unlock()
		return false
	case <-u.quit:
		return false
	}
}

// Hits is how many requests reached path.
func (u *modelUpstream) Hits(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[path]
}

// Received lists the requests that reached path, oldest first.
func (u *modelUpstream) Received(path string) []Received {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Received(nil), u.received[path]...)
}

// Cancelled is how many requests ended (the client went away) before their
// answer.
func (u *modelUpstream) Cancelled() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.cancelled
}

// WaitHits waits until path has seen at least n requests.
func (u *modelUpstream) WaitHits(t testing.TB, path string, n int, d time.Duration) {
	t.Helper()
	waitCount(t, "upstream "+path+": requests", n, d, func() (int, <-chan struct{}) {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.hits[path], u.changed
	})
}

// wantUpstreamHits checks how many requests the upstream saw on path.
func wantUpstreamHits(t testing.TB, u *modelUpstream, path string, n int) {
	t.Helper()
	if got := u.Hits(path); got != n {
		t.Errorf("upstream requests to %s: got %d, want %d", path, got, n)
	}
}

// cacheReq is a cacheable call (no cache field, so "use") to upstream at
// path; kv adds fields in pairs, as for callReq.
func cacheReq(upstream, path string, kv ...any) Req {
	r := Req{"upstream": upstream, "path": path}
	for i := 0; i+1 < len(kv); i += 2 {
		r[kv[i].(string)] = kv[i+1]
	}
	return r
}

// raw is JSON text sent as is, so that key order and number spelling
// reach fender unchanged.
func raw(s string) json.RawMessage { return json.RawMessage(s) }

// answerOf decodes the body of a 2xx answer from a modelUpstream.
func answerOf(t testing.TB, r Resp) answerBody {
	t.Helper()
	var a answerBody
	if len(r.Body) == 0 || r.Body[0] != '{' {
		t.Fatalf("body: got %s, want the upstream's JSON object (answer %s)", r.Body, r.Raw)
	}
	if err := json.Unmarshal(r.Body, &a); err != nil {
		t.Fatalf("body: %v (answer %s)", err, r.Raw)
	}
	return a
}

// metaOf is r's meta, or a failure when it has none.
func metaOf(t testing.TB, r Resp) Meta {
	t.Helper()
	if r.Meta == nil {
		t.Fatalf("answer has no meta: %s", r.Raw)
		return Meta{}
	}
	return *r.Meta
}

// wantHit checks a successful answer served fresh from the cache: ok,
// meta.cached, not stale, no upstream attempt.
func wantHit(t testing.TB, r Resp) {
	t.Helper()
	wantOK(t, r)
	m := metaOf(t, r)
	if !m.Cached || m.Stale || m.Attempts != 0 {
		t.Errorf("meta: got cached %v, stale %v, attempts %d, want a fresh hit (cached true, stale false, attempts 0); answer %s",
			m.Cached, m.Stale, m.Attempts, r.Raw)
	}
}

// wantMiss checks a successful answer that came from the upstream.
func wantMiss(t testing.TB, r Resp) {
	t.Helper()
	wantOK(t, r)
	m := metaOf(t, r)
	if m.Cached || m.Stale || m.Attempts < 1 {
		t.Errorf("meta: got cached %v, stale %v, attempts %d, want a miss (cached false, stale false, attempts >= 1); answer %s",
			m.Cached, m.Stale, m.Attempts, r.Raw)
	}
}

// wantSameBody checks that two answers carry the same JSON body.
func wantSameBody(t testing.TB, got, want Resp) {
	t.Helper()
	if !jsonEqual(t, string(got.Body), string(want.Body)) {
		t.Errorf("body: got %s, want %s", got.Body, want.Body)
	}
}

// wantFallback checks meta.fallback and meta.stale of a successful answer.
func wantFallback(t testing.TB, r Resp, fallback string, stale bool) {
	t.Helper()
	wantOK(t, r)
	m := metaOf(t, r)
	if m.Fallback != fallback {
		t.Errorf("meta.fallback: got %q, want %q (answer %s)", m.Fallback, fallback, r.Raw)
	}
	if m.Stale != stale {
		t.Errorf("meta.stale: got %v, want %v (answer %s)", m.Stale, stale, r.Raw)
	}
}

// Stats is the stats object of a stats answer; per-upstream figures are
// under Upstreams.
type Stats struct {
	Requests     float64               `json:"requests"`
	CacheHits    float64               `json:"cache_hits"`
	CacheMisses  float64               `json:"cache_misses"`
	CacheHitRate float64               `json:"cache_hit_rate"`
	Coalesced    float64               `json:"coalesced"`
	Fallbacks    float64               `json:"fallbacks"`
	Inflight     float64               `json:"inflight"`
	CacheEntries *float64              `json:"cache_entries"`
	CacheBytes   *float64              `json:"cache_bytes"`
	Upstreams    map[string]StatsGroup `json:"upstreams"`
	Raw          string                `json:"-"`
}

// StatsGroup is the figures of one upstream in a stats answer.
type StatsGroup struct {
	Requests     float64 `json:"requests"`
	CacheHits    float64 `json:"cache_hits"`
	CacheMisses  float64 `json:"cache_misses"`
	CacheHitRate float64 `json:"cache_hit_rate"`
	Coalesced    float64 `json:"coalesced"`
	Fallbacks    float64 `json:"fallbacks"`
}

// fenderStats asks f for its stats on a connection of its own.
func fenderStats(t testing.TB, f *Fender) Stats {
	t.Helper()
	r := f.Call(t, Req{"op": "stats"})
	wantOK(t, r)
	var a struct {
		Stats *Stats `json:"stats"`
	}
	if err := json.Unmarshal([]byte(r.Raw), &a); err != nil || a.Stats == nil {
		t.Fatalf("stats answer %s: want a stats object (%v)", r.Raw, err)
	}
	a.Stats.Raw = r.Raw
	return *a.Stats
}

// entries is stats.cache_entries; a missing field fails the test.
func (s Stats) entries(t testing.TB) int {
	t.Helper()
	if s.CacheEntries == nil {
		t.Fatalf("stats: no cache_entries in %s", s.Raw)
		return 0
	}
	return int(*s.CacheEntries)
}

// bytes is stats.cache_bytes; a missing field fails the test.
func (s Stats) bytes(t testing.TB) int {
	t.Helper()
	if s.CacheBytes == nil {
		t.Fatalf("stats: no cache_bytes in %s", s.Raw)
		return 0
	}
	return int(*s.CacheBytes)
}

// waitInflight polls stats until fender has at least n calls in flight,
// at most d; it reports whether it saw them. Coalesced waiters cannot be
// seen from outside any other way.
func waitInflight(t testing.TB, f *Fender, n int, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if int(fenderStats(t, f).Inflight) >= n {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// purge sends the purge admin op (for every upstream when upstream is "")
// and returns the purged count.
func purge(t testing.TB, f *Fender, upstream string) int {
	t.Helper()
	req := Req{"op": "purge"}
	if upstream != "" {
		req["upstream"] = upstream
	}
	r := f.Call(t, req)
	wantOK(t, r)
	var a struct {
		Purged *int `json:"purged"`
	}
	if err := json.Unmarshal([]byte(r.Raw), &a); err != nil || a.Purged == nil {
		t.Fatalf("purge answer %s: want a purged count (%v)", r.Raw, err)
	}
	return *a.Purged
}

// pathf is fmt.Sprintf, named for what it builds.
func pathf(format string, a ...any) string { return fmt.Sprintf(format, a...) }
