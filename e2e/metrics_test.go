package e2e

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// metricsEnv is an environment for counting attempts: 300ms attempts,
// quick backoff, a breaker that never opens and a retry budget that never
// runs out.
func metricsEnv(ups string) map[string]string {
	return map[string]string{
		"FENDER_UPSTREAMS":        ups,
		"FENDER_RETRIES":          "2",
		"FENDER_TIMEOUT":          "300ms",
		"FENDER_BACKOFF_INITIAL":  "1ms",
		"FENDER_BACKOFF_MAX":      "2ms",
		"FENDER_BREAKER_FAILURES": "1000",
		"FENDER_RETRY_BUDGET_MIN": "100",
		"FENDER_DEADLINE":         "20s",
	}
}

// TestMetricsRequestsAndAttempts makes a known mix of calls and checks the
// exact moves of fender_requests_total{upstream,code},
// fender_upstream_attempts_total{upstream,model,result} (retries
// included), fender_retries_total{upstream} and the _count of both
// duration histograms, whose buckets carry vmrange labels (SPEC 9).
func TestMetricsRequestsAndAttempts(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f, m := startMetricsFender(t, metricsEnv(upstreams("llm", u.URL, "down", refusedURL(t))))
	before := m.scrape(t)

	calls := []struct {
		req  Req
		code string
	}{
		{callReq("llm", "/ok", "model", "m1"), ""},
		{callReq("llm", "/ok", "model", "m1"), ""},
		{callReq("llm", "/ok", "model", "m1"), ""},
		{callReq("llm", "/status/500", "model", "m1"), "upstream_status"},               // 3 attempts, 2 retries
		{callReq("llm", "/status/429", "model", "m1", "retries", 1), "upstream_status"}, // 2 attempts
		{callReq("llm", "/status/404", "model", "m1"), "upstream_status"},               // 1 attempt
		{callReq("llm", "/hang", "model", "m1", "retries", 1), "timeout"},               // 2 attempts
		{callReq("llm", "/reset", "model", "m1", "retries", 0), "unavailable"},          // 1 attempt
		{callReq("llm", "/flaky?fail=1&key=m", "model", "m1"), ""},                      // 503, then 200
		{callReq("down", "/ok", "model", "m1", "retries", 1), "unavailable"},            // 2 attempts
	}
	for i, c := range calls {
		r := f.Call(t, c.req)
		if c.code == "" {
			wantOK(t, r)
		} else if r.Code() != c.code {
			t.Fatalf("call %d (%v): got %s, want error %s", i, c.req["path"], r.Raw, c.code)
		}
	}

	llm := []string{"upstream", "llm"}
	with := func(kv ...string) []string { return append(append([]string(nil), llm...), kv...) }
	sc := m.await(t,
		deltaOf(before, 4, "fender_requests_total", with("code", "ok")...),
		deltaOf(before, 3, "fender_requests_total", with("code", "upstream_status")...),
		deltaOf(before, 1, "fender_requests_total", with("code", "timeout")...),
		deltaOf(before, 1, "fender_requests_total", with("code", "unavailable")...),
		deltaOf(before, 9, "fender_requests_total", llm...),
		deltaOf(before, 1, "fender_requests_total", "upstream", "down", "code", "unavailable"),

		deltaOf(before, 4, "fender_upstream_attempts_total", with("model", "m1", "result", "ok")...),
		deltaOf(before, 4, "fender_upstream_attempts_total", with("model", "m1", "result", "status_5xx")...),
		deltaOf(before, 2, "fender_upstream_attempts_total", with("model", "m1", "result", "status_429")...),
		deltaOf(before, 1, "fender_upstream_attempts_total", with("model", "m1", "result", "status_4xx")...),
		deltaOf(before, 2, "fender_upstream_attempts_total", with("model", "m1", "result", "timeout")...),
		deltaOf(before, 1, "fender_upstream_attempts_total", with("model", "m1", "result", "network")...),
		deltaOf(before, 14, "fender_upstream_attempts_total", llm...),
		deltaOf(before, 2, "fender_upstream_attempts_total", "upstream", "down", "model", "m1", "result", "network"),

		deltaOf(before, 5, "fender_retries_total", llm...),
		deltaOf(before, 1, "fender_retries_total", "upstream", "down"),

		deltaOf(before, 9, "fender_request_duration_seconds_count", llm...),
		deltaOf(before, 14, "fender_upstream_duration_seconds_count", llm...),
		present("fender_request_duration_seconds_sum", llm...),
		present("fender_upstream_duration_seconds_sum", llm...),
	)
	for _, name := range []string{"fender_request_duration_seconds", "fender_upstream_duration_seconds"} {
		buckets := sc.find(name+"_bucket", llm...)
		if len(buckets) == 0 {
			t.Errorf("%s_bucket{upstream=\"llm\"}: no buckets; series:\n%s", name, sc.lines(name+"_bucket"))
			continue
		}
		var n float64
		for _, b := range buckets {
			if !strings.Contains(b.Labels["vmrange"], "...") {
				t.Errorf("%s: got vmrange %q, want \"LOW...HIGH\"", b, b.Labels["vmrange"])
			}
			n += b.Value
		}
		if count := sc.sum(name+"_count", llm...); n != count {
			t.Errorf("%s{upstream=\"llm\"}: buckets add up to %g, _count is %g", name, n, count)
		}
	}
}

// TestMetricsRetryBudgetExhausted checks that a retry refused by a retry
// budget of 0 (minimum 0) counts once in
// fender_retry_budget_exhausted_total and is not a retry (SPEC 2, 9).
func TestMetricsRetryBudgetExhausted(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := metricsEnv(upstreams("llm", u.URL))
	env["FENDER_RETRY_BUDGET"] = "0"
	env["FENDER_RETRY_BUDGET_MIN"] = "0"
	f, m := startMetricsFender(t, env)
	before := m.scrape(t)
	r := f.Call(t, callReq("llm", "/status/503", "retries", 2))
	wantError(t, r, "upstream_status", true)
	wantAttempts(t, r, 1)
	m.await(t,
		deltaOf(before, 1, "fender_retry_budget_exhausted_total", "upstream", "llm"),
		deltaOf(before, 0, "fender_retries_total", "upstream", "llm"),
		deltaOf(before, 1, "fender_upstream_attempts_total", "upstream", "llm", "result", "status_5xx"),
	)
}

// TestMetricsCache checks fender_cache_requests_total{result} for a miss,
// a hit, a coalesced group (one miss, two coalesced) and a stale answer,
// fender_fallbacks_total{upstream,kind} for stale and upstream fallbacks,
// and that the cache gauges match the stats op (SPEC 4, 5, 9).
func TestMetricsInflightAndConnections(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f, m := startMetricsFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	before := m.await(t,
		valueOf(0, "fender_inflight_requests"),
		valueOf(0, "fender_connections_active"),
		present("fender_connections_total"),
	)
	var clients []*Client
	for range 2 {
		c := f.Dial(t)
		c.Send(t, callReq("up", "/hang", "timeout_ms", 20000))
		clients = append(clients, c)
	}
	u.WaitHits(t, "/hang", 2, 10*time.Second)
	m.await(t,
		valueOf(2, "fender_inflight_requests"),
		valueOf(2, "fender_connections_active"),
		deltaOf(before, 2, "fender_connections_total"),
	)
	for _, c := range clients {
		c.Close()
	}
	u.WaitCancelled(t, 2, 5*time.Second)
	m.await(t,
		valueOf(0, "fender_inflight_requests"),
		valueOf(0, "fender_connections_active"),
		deltaOf(before, 2, "fender_connections_total"),
	)
}

// TestMetricsRejected checks fender_rejected_total{reason}: +1 per bad
// line (bad_request), per line over FENDER_MAX_REQUEST_BYTES (too_large),
// per admin op from a peer that is not an admin (forbidden), per call past
// FENDER_MAX_INFLIGHT (overloaded), and per connection closed because its
// uid is not in FENDER_ALLOWED_UIDS (peer) (SPEC 1, 5, 7, 9).
func TestMetricsRejected(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	ups := upstreams("up", u.URL)
	t.Run("requests", func(t *testing.T) {
		t.Parallel()
		f, m := startMetricsFender(t, map[string]string{
			"FENDER_UPSTREAMS":         ups,
			"FENDER_RETRIES":           "0",
			"FENDER_MAX_REQUEST_BYTES": "4096",
			"FENDER_MAX_INFLIGHT":      "1",
			"FENDER_ADMIN_UIDS":        "4242", // not us
		})
		before := m.scrape(t)
		c := f.Dial(t)
		for _, line := range []string{
			`not json`,
			`{"id":"b2","op":"nope"}`,
			`{"id":"b3","upstream":"up","retries":-1}`,
			`{"id":"b4","path":"/ok"}`,
		} {
			c.WriteRaw(t, line+"\n")
			if r := c.Next(t); r.Code() != "bad_request" {
				t.Errorf("line %s: got %s, want bad_request", line, r.Raw)
			}
		}
		c.WriteRaw(t, `{"id":"big","upstream":"up","body_text":"`+strings.Repeat("x", 10000)+`"}`+"\n")
		if r := c.Next(t); r.Code() != "too_large" {
			t.Errorf("line of 10000 bytes: got %s, want too_large", r.Raw)
		}
		wantError(t, c.Call(t, Req{"op": "reset"}), "forbidden", false)
		wantError(t, c.Call(t, Req{"op": "purge"}), "forbidden", false)

		hanging := f.Dial(t)
		hanging.Send(t, callReq("up", "/hang", "timeout_ms", 20000))
		u.WaitHits(t, "/hang", 1, 10*time.Second)
		wantError(t, c.Call(t, callReq("up", "/ok")), "overloaded", true)

		m.await(t,
			deltaOf(before, 4, "fender_rejected_total", "reason", "bad_request"),
			deltaOf(before, 1, "fender_rejected_total", "reason", "too_large"),
			deltaOf(before, 2, "fender_rejected_total", "reason", "forbidden"),
			deltaOf(before, 1, "fender_rejected_total", "reason", "overloaded"),
			deltaOf(before, 0, "fender_rejected_total", "reason", "peer"),
		)
	})
	t.Run("peer", func(t *testing.T) {
		t.Parallel()
		f, m := launchMetricsFender(t, map[string]string{
			"FENDER_UPSTREAMS":    ups,
			"FENDER_ALLOWED_UIDS": "4242", // not us
		})
		before := m.scrape(t)
		conn := dialWhenListening(t, f.Socket)
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = conn.Write([]byte(`{"id":1,"op":"ping"}` + "\n"))
		if n, err := conn.Read(make([]byte, 256)); err == nil {
			t.Errorf("connection from a uid not allowed: read %d bytes, want it closed", n)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("connection from a uid not allowed: still open after 5s, want it closed at once")
		}
		m.await(t,
			deltaOf(before, 1, "fender_rejected_total", "reason", "peer"),
			valueOf(0, "fender_connections_active"),
		)
	})
}

// dialWhenListening dials sock until fender listens on it.
func dialWhenListening(t testing.TB, sock string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetricsSeriesAtStart checks that a fresh fender's /metrics is
// well-formed text with the process and Go metrics and the unlabelled
// fender series (SPEC 9).
func TestMetricsSeriesAtStart(t *testing.T) {
	t.Parallel()
	_, m := startMetricsFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", refusedURL(t))})
	sc := m.scrape(t)
	for _, c := range []check{
		present("process_cpu_seconds_total"),
		present("fender_cache_entries"),
		present("fender_cache_bytes"),
		present("fender_cache_evictions_total"),
		present("fender_inflight_requests"),
		present("fender_connections_active"),
		present("fender_connections_total"),
	} {
		if err := c(sc); err != nil {
			t.Error(err)
		}
	}
	if !sc.has("go_goroutines") && !sc.has("go_memstats_alloc_bytes") {
		t.Errorf("no go_goroutines or go_memstats_alloc_bytes: want the Go runtime metrics")
	}
	for _, s := range sc.Samples {
		if strings.HasSuffix(s.Name, "_bucket") && strings.HasPrefix(s.Name, "fender_") {
			if _, ok := s.Labels["vmrange"]; !ok {
				t.Errorf("%s: a histogram bucket without vmrange", s)
			}
		}
	}
}

// TestMetricsModelCardinality sends calls for 150 distinct models to one
// upstream: fender_upstream_attempts_total labels at most 100 of them by
// name and the rest model="other", and counts all 150 (SPEC 9; README
// "Metric labels are bounded").
func TestMetricsModelCardinality(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f, m := startMetricsFender(t, metricsEnv(upstreams("llm", u.URL)))
	before := m.scrape(t)
	c := f.Dial(t)
	const n = 150
	chans := make([]<-chan Resp, n)
	for i := range n {
		chans[i] = c.Send(t, callReq("llm", "/ok", "model", fmt.Sprintf("model-%03d", i)))
	}
	for _, ch := range chans {
		wantOK(t, c.Wait(t, ch))
	}
	sc := m.await(t, deltaOf(before, n, "fender_upstream_attempts_total", "upstream", "llm", "result", "ok"))
	models := sc.labelValues("fender_upstream_attempts_total", "model", "upstream", "llm")
	named := 0
	other := false
	for _, v := range models {
		if v == "other" {
			other = true
		} else {
			named++
		}
	}
	if named > 100 {
		t.Errorf("fender_upstream_attempts_total{upstream=\"llm\"}: %d distinct model labels besides \"other\", want at most 100", named)
	}
	if !other {
		t.Errorf("fender_upstream_attempts_total{upstream=\"llm\"}: no model=\"other\" after %d models; model labels: %v", n, models)
	}
}

// TestHealthzReadyz checks /healthz (200 while alive) and /readyz (200
// while serving, 503 while draining with a call still in flight), and that
// the metrics server is gone once fender has exited (SPEC 8, 9).
func TestHealthzReadyz(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f, m := startMetricsFender(t, map[string]string{
		"FENDER_UPSTREAMS":     upstreams("up", u.URL),
		"FENDER_DRAIN_TIMEOUT": "2s",
	})
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body, err := m.get(path); err != nil || code != 200 {
			t.Errorf("GET %s while serving: status %d (%q), error %v, want 200", path, code, body, err)
		}
	}
	c := f.Dial(t)
	call := c.Send(t, callReq("up", "/hang", "timeout_ms", 20000))
	u.WaitHits(t, "/hang", 1, 10*time.Second)
	f.Signal(t, syscall.SIGTERM)

	deadline := time.Now().Add(1500 * time.Millisecond)
	code := 0
	for {
		var err error
		code, _, err = m.get("/readyz")
		if err == nil && code == 503 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case r := <-call:
		t.Errorf("the call in flight was answered (%s) before /readyz was checked", r.Raw)
	default:
		if code != 503 {
			t.Errorf("GET /readyz while draining: got status %d, want 503", code)
		}
		if code, _, err := m.get("/healthz"); err != nil || code != 200 {
			t.Errorf("GET /healthz while draining: status %d, error %v, want 200", code, err)
		}
	}
	wantError(t, c.Wait(t, call), "shutting_down", true)
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
	if code, _, err := m.get("/metrics"); err == nil {
		t.Errorf("GET /metrics after exit: got status %d, want the connection refused", code)
	}
}
