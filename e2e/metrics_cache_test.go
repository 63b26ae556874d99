package e2e

import (
	"testing"
	"time"
)

func TestMetricsCache(t *testing.T) {
	t.Parallel()
	llm, small := newModelUpstream(t), newModelUpstream(t)
	env := cacheEnv(upstreams("llm", llm.URL, "small", small.URL))
	env["FENDER_CACHE_TTL"] = "200ms"
	env["FENDER_CACHE_STALE"] = "1m"
	env["FENDER_TIMEOUT"] = "1s"
	env["FENDER_POLICIES"] = `{"llm":{"fallback":["small"]}}`
	f, m := startMetricsFender(t, env)
	before := m.scrape(t)

	// A miss, then a hit.
	wantMiss(t, f.Call(t, cacheReq("llm", "/a", "cache_ttl_ms", 60000)))
	wantHit(t, f.Call(t, cacheReq("llm", "/a", "cache_ttl_ms", 60000)))

	// Three identical calls at once: one miss and two coalesced.
	gate := make(chan struct{})
	llm.Set("/c", Behavior{Gate: gate})
	c := f.Dial(t)
	var chans []<-chan Resp
	for range 3 {
		chans = append(chans, c.Send(t, cacheReq("llm", "/c", "cache_ttl_ms", 60000)))
	}
	llm.WaitHits(t, "/c", 1, 10*time.Second)
	if !waitInflight(t, f, 3, 5*time.Second) {
		t.Fatalf("3 identical calls not in flight at once")
	}
	close(gate)
	for _, ch := range chans {
		wantOK(t, c.Wait(t, ch))
	}
	wantUpstreamHits(t, llm, "/c", 1)

	// An entry past its TTL, then a failing upstream: a stale answer.
	store := time.Now()
	wantMiss(t, f.Call(t, cacheReq("llm", "/s")))
	time.Sleep(time.Until(store.Add(500 * time.Millisecond)))
	llm.Set("/s", Behavior{Status: 503})
	wantFallback(t, f.Call(t, cacheReq("llm", "/s")), "stale", true)

	// No entry and a failing upstream: the fallback upstream answers.
	llm.Set("/f", Behavior{Status: 503})
	wantFallback(t, f.Call(t, cacheReq("llm", "/f")), "small", false)

	m.await(t,
		deltaOf(before, 1, "fender_cache_requests_total", "result", "hit"),
		deltaOf(before, 4, "fender_cache_requests_total", "result", "miss"), // /a, /c, /s, /f
		deltaOf(before, 2, "fender_cache_requests_total", "result", "coalesced"),
		deltaOf(before, 1, "fender_cache_requests_total", "result", "stale"),
		deltaOf(before, 1, "fender_fallbacks_total", "upstream", "llm", "kind", "stale"),
		deltaOf(before, 1, "fender_fallbacks_total", "upstream", "llm", "kind", "upstream"),
		deltaOf(before, 2, "fender_fallbacks_total"),
	)
	wantCacheGauges(t, f, m)
}

// TestMetricsCacheEvictions makes 5 distinct cacheable calls with
// FENDER_CACHE_MAX_ENTRIES=2: fender_cache_evictions_total moves by 3,
// fender_cache_entries is 2, and both gauges match the stats op (SPEC 4, 9).
func TestMetricsCacheEvictions(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	env := cacheEnv(upstreams("llm", u.URL))
	env["FENDER_CACHE_MAX_ENTRIES"] = "2"
	f, m := startMetricsFender(t, env)
	before := m.scrape(t)
	for i := range 5 {
		wantMiss(t, f.Call(t, cacheReq("llm", pathf("/e/%d", i))))
	}
	sc := m.await(t,
		deltaOf(before, 3, "fender_cache_evictions_total"),
		valueOf(2, "fender_cache_entries"),
		deltaOf(before, 5, "fender_cache_requests_total", "result", "miss"),
	)
	if got := sc.sum("fender_cache_bytes"); got <= 0 {
		t.Errorf("fender_cache_bytes: got %g with 2 entries, want > 0", got)
	}
	wantCacheGauges(t, f, m)
}

// wantCacheGauges checks that fender_cache_entries and fender_cache_bytes
// equal cache_entries and cache_bytes of the stats op.
func wantCacheGauges(t testing.TB, f *Fender, m *metricsEndpoint) {
	t.Helper()
	st := fenderStats(t, f)
	m.await(t,
		valueOf(float64(st.entries(t)), "fender_cache_entries"),
		valueOf(float64(st.bytes(t)), "fender_cache_bytes"),
	)
}

// TestMetricsBreaker walks a breaker (2 failures, 1 success to close,
// 1.5s cooldown) through open, half-open, open again and closed, checking
// fender_breaker_state{upstream,model} (0 closed, 1 open, 2 half-open) and
// fender_breaker_transitions_total{upstream,model,to} at each step
// (SPEC 3, 9).
func TestMetricsBreaker(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	const cooldown = 1500 * time.Millisecond
	env := breakerEnv(upstreams("llm", u.URL), cooldown.String())
	env["FENDER_BREAKER_FAILURES"] = "2"
	env["FENDER_BREAKER_SUCCESSES"] = "1"
	f, m := startMetricsFender(t, env)
	key := []string{"upstream", "llm", "model", "m1"}
	to := func(state string) []string { return append(append([]string(nil), key...), "to", state) }

	wantOK(t, f.Call(t, callReq("llm", "/ok", "model", "m1")))
	before := m.await(t, valueOf(0, "fender_breaker_state", key...))

	u.Set("/fail", Behavior{Status: 500})
	for range 2 {
		wantError(t, f.Call(t, callReq("llm", "/fail", "model", "m1")), "upstream_status", true)
	}
	opened := time.Now()
	wantError(t, f.Call(t, callReq("llm", "/ok", "model", "m1")), "circuit_open", true)
	m.await(t,
		valueOf(1, "fender_breaker_state", key...),
		deltaOf(before, 1, "fender_breaker_transitions_total", to("open")...),
		deltaOf(before, 0, "fender_breaker_transitions_total", to("half_open")...),
	)

	// After the cooldown a probe that hangs holds the breaker half-open.
	time.Sleep(time.Until(opened.Add(cooldown + 200*time.Millisecond)))
	gate := make(chan struct{})
	u.Set("/probe", Behavior{Gate: gate, Status: 500})
	c := f.Dial(t)
	probe := c.Send(t, callReq("llm", "/probe", "model", "m1"))
	u.WaitHits(t, "/probe", 1, 10*time.Second)
	m.await(t,
		valueOf(2, "fender_breaker_state", key...),
		deltaOf(before, 1, "fender_breaker_transitions_total", to("half_open")...),
	)
	close(gate)
	wantError(t, c.Wait(t, probe), "upstream_status", true)
	reopened := time.Now()
	m.await(t,
		valueOf(1, "fender_breaker_state", key...),
		deltaOf(before, 2, "fender_breaker_transitions_total", to("open")...),
	)

	// After the next cooldown one success closes it.
	time.Sleep(time.Until(reopened.Add(cooldown + 200*time.Millisecond)))
	wantOK(t, f.Call(t, callReq("llm", "/ok", "model", "m1")))
	m.await(t,
		valueOf(0, "fender_breaker_state", key...),
		deltaOf(before, 2, "fender_breaker_transitions_total", to("open")...),
		deltaOf(before, 2, "fender_breaker_transitions_total", to("half_open")...),
		deltaOf(before, 1, "fender_breaker_transitions_total", to("closed")...),
	)

	// Each transition is also logged at warn (SPEC 9).
	for state, n := range map[string]int{"open": 2, "half_open": 2, "closed": 1} {
		pred := func(l logLine) bool {
			return l.Level() == "warn" && l.Str("upstream") == "llm" && l.Str("model") == "m1" && l.Str("to") == state
		}
		f.stderr.WaitFor(func(s string) bool { return len(findLogs(s, pred)) >= n }, logWait)
		if lines := findLogs(f.Stderr(), pred); len(lines) != n {
			t.Errorf("warn lines for the breaker of llm/m1 going %s: got %d, want %d", state, len(lines), n)
		}
	}
}

// TestMetricsInflightAndConnections holds one call on each of two new
// connections: fender_inflight_requests and fender_connections_active are
// 2 while they hang, fender_connections_total moves by 2, and both gauges
// return to 0 once the clients go away (SPEC 9).
