package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Upstream is a fake upstream with fault injection, one per test so that its
// counters belong to that test. Routes:
//
//	/, /ok, /ok/...   200 JSON echo of the request (see Echo); header X-Upstream: fake
//	/text             200 text/plain "hello, fender"
//	/status/N         status N, JSON body {"status":N}
//	/flaky?fail=N&status=S&ra=V&key=K
//	                  fails N times with S (default 503; Retry-After V when given,
//	                  "date:SECS" for an HTTP date SECS from now), then 200 JSON;
//	                  counted per key (default: the whole query)
//	/429?ra=V         always 429 with Retry-After V
//	/503-retry-after?ra=V  always 503 with Retry-After V
//	/reset            reads the request, then closes the TCP connection with RST
//	/hang             blocks until the request context is done
//	/slow?ms=N        answers 200 JSON after N ms
//	/slowbody         sends headers and 10 of 100 promised bytes, then stalls
//	/big?n=N          200 text/plain body of N bytes 'x'
//	/redirect         302 to /ok
type Upstream struct {
	*httptest.Server

	quit      chan struct{}
	cancelled chan string

	mu        sync.Mutex
	hits      map[string]int
	times     map[string][]time.Time
	active    map[string]int
	maxActive map[string]int
	tries     map[string]int
	changed   chan struct{}
}

// Echo is what /ok answers: the request as the upstream received it.
type Echo struct {
	Method           string            `json:"method"`
	Path             string            `json:"path"`
	URI              string            `json:"uri"`
	Host             string            `json:"host"`
	Headers          map[string]string `json:"headers"`
	Body             string            `json:"body"`
	ContentLength    int64             `json:"content_length"`
	TransferEncoding []string          `json:"transfer_encoding"`
}

func newUpstream(t testing.TB) *Upstream {
	t.Helper()
	u := &Upstream{
		quit:      make(chan struct{}),
		cancelled: make(chan string, 1024),
		hits:      make(map[string]int),
		times:     make(map[string][]time.Time),
		active:    make(map[string]int),
		maxActive: make(map[string]int),
		tries:     make(map[string]int),
		changed:   make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", u.echo)
	mux.HandleFunc("/text", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "hello, fender")
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 200 || code > 599 {
			http.Error(w, "bad status", http.StatusTeapot)
			return
		}
		writeJSON(w, code, map[string]any{"status": code})
	})
	mux.HandleFunc("/flaky", u.flaky)
	mux.HandleFunc("/429", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", retryAfter(r.URL.Query().Get("ra")))
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"error": "slow down"})
	})
	mux.HandleFunc("/503-retry-after", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", retryAfter(r.URL.Query().Get("ra")))
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "busy"})
	})
	mux.HandleFunc("/reset", func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		conn.Close()
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			u.cancelled <- r.URL.Path
		case <-u.quit:
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			writeJSON(w, http.StatusOK, map[string]any{"slept_ms": ms})
		case <-r.Context().Done():
			u.cancelled <- r.URL.Path
		case <-u.quit:
		}
	})
	mux.HandleFunc("/slowbody", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "0123456789")
		_ = http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-u.quit:
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, strings.Repeat("x", n))
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/ok")
		w.WriteHeader(http.StatusFound)
	})
	u.Server = httptest.NewServer(u.record(mux))
	t.Cleanup(func() {
		close(u.quit)
		u.Server.CloseClientConnections()
		u.Server.Close()
	})
	return u
}

// record counts each request by path before the route runs. It reads the
// request body first, so that the server notices a client that goes away
// (net/http watches the connection only once the body is consumed).
func (u *Upstream) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		path := r.URL.Path
		u.mu.Lock()
		u.hits[path]++
		u.times[path] = append(u.times[path], time.Now())
		u.active[path]++
		u.maxActive[path] = max(u.maxActive[path], u.active[path])
		u.notifyLocked()
		u.mu.Unlock()
		defer func() {
			u.mu.Lock()
			u.active[path]--
			u.mu.Unlock()
		}()
		next.ServeHTTP(w, r)
	})
}

func (u *Upstream) notifyLocked() {
	close(u.changed)
	u.changed = make(chan struct{})
}

func (u *Upstream) echo(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	e := Echo{
		Method:           r.Method,
		Path:             r.URL.Path,
		URI:              r.RequestURI,
		Host:             r.Host,
		Headers:          make(map[string]string),
		Body:             string(body),
		ContentLength:    r.ContentLength,
		TransferEncoding: r.TransferEncoding,
	}
	for k, v := range r.Header {
		e.Headers[k] = strings.Join(v, ", ")
	}
	w.Header().Set("X-Upstream", "fake")
	writeJSON(w, http.StatusOK, e)
}

func (u *Upstream) flaky(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	key := q.Get("key")
	if key == "" {
		key = r.URL.RawQuery
	}
	u.mu.Lock()
	u.tries[key]++
	n := u.tries[key]
	u.mu.Unlock()
	fail, _ := strconv.Atoi(q.Get("fail"))
	if n <= fail {
		status, _ := strconv.Atoi(q.Get("status"))
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
		if ra := q.Get("ra"); ra != "" {
			w.Header().Set("Retry-After", retryAfter(ra))
		}
		writeJSON(w, status, map[string]any{"attempt": n, "failing": true})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"attempt": n})
}

// retryAfter turns "date:N" into an HTTP date N seconds from now; any other
// value is used as is.
func retryAfter(v string) string {
	if secs, ok := strings.CutPrefix(v, "date:"); ok {
		n, _ := strconv.Atoi(secs)
		return time.Now().Add(time.Duration(n) * time.Second).UTC().Format(http.TimeFormat)
	}
	return v
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Hits is how many requests reached path.
func (u *Upstream) Hits(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[path]
}

// HitTimes is when each request to path arrived.
func (u *Upstream) HitTimes(path string) []time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]time.Time(nil), u.times[path]...)
}

// MaxActive is the most requests to path that were in progress at once.
func (u *Upstream) MaxActive(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.maxActive[path]
}

// WaitHits waits until path has seen at least n requests.
func (u *Upstream) WaitHits(t testing.TB, path string, n int, d time.Duration) {
	t.Helper()
	waitCount(t, "upstream "+path+": requests", n, d, func() (int, <-chan struct{}) {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.hits[path], u.changed
	})
}

// WaitCancelled waits until n requests on /hang or /slow saw their context
// cancelled.
func (u *Upstream) WaitCancelled(t testing.TB, n int, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for i := range n {
		select {
		case <-u.cancelled:
		case <-timer.C:
			t.Fatalf("upstream: %d of %d requests cancelled within %v", i, n, d)
		}
	}
}

// refusedURL is the URL of a 127.0.0.1 port that was listened on and
// closed, so connecting to it is refused.
func refusedURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// upstreams formats FENDER_UPSTREAMS from name, url pairs.
func upstreams(pairs ...string) string {
	var parts []string
	for i := 0; i+1 < len(pairs); i += 2 {
		parts = append(parts, pairs[i]+"="+pairs[i+1])
	}
	return strings.Join(parts, ",")
}

// waitCount waits until read's count reaches n, waking when the channel it
// returns with the count is closed (on each change), and fails the test
// after d.
func waitCount(t testing.TB, what string, n int, d time.Duration, read func() (int, <-chan struct{})) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		got, changed := read()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			got, _ = read()
			t.Fatalf("%s: got %d within %v, want %d", what, got, d, n)
		}
	}
}
