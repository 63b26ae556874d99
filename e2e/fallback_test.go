package e2e

import (
	"maps"
	"strings"
	"testing"
	"time"
)

// staleEnv is an environment with a short TTL, single attempts of at most
// 300ms and a breaker that opens after 2 failures; every stale test case
// uses a model of its own, so that breakers do not mix.
func staleEnv(ups, ttl, stale string) map[string]string {
	env := cacheEnv(ups)
	env["FENDER_CACHE_TTL"] = ttl
	env["FENDER_CACHE_STALE"] = stale
	env["FENDER_TIMEOUT"] = "300ms"
	env["FENDER_BREAKER_FAILURES"] = "2"
	env["FENDER_BREAKER_COOLDOWN"] = "1m"
	return env
}

// TestStaleIfError caches answers with a 200ms TTL, waits past it, then
// makes the upstream fail: a transient failure (503, 429, reset, an attempt
// timeout, the deadline, an open breaker) is answered with the expired
// entry (ok, meta.stale, meta.fallback "stale", the old body); a permanent
// one (404) is answered as it is (SPEC 4).
func TestStaleIfError(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	env := staleEnv(upstreams("llm", u.URL, "patient", u.URL), "200ms", "1m")
	env["FENDER_POLICIES"] = `{"patient":{"timeout":"10s"}}`
	f := startFender(t, env)

	cases := []struct {
		name     string
		upstream string
		fail     Behavior
		extra    []any // more request fields for the failing call
		stale    bool
		maxTime  time.Duration // 0: not timed
	}{
		{name: "503", fail: Behavior{Status: 503}, stale: true},
		{name: "429", fail: Behavior{Status: 429}, stale: true},
		{name: "reset", fail: Behavior{Reset: true}, stale: true},
		{name: "attempt timeout", fail: Behavior{Hang: true}, stale: true, maxTime: 300 * time.Millisecond},
		{name: "deadline", upstream: "patient", fail: Behavior{Hang: true}, extra: []any{"timeout_ms", 500}, stale: true, maxTime: 550 * time.Millisecond},
		{name: "breaker open", stale: true},
		{name: "404", fail: Behavior{Status: 404}},
	}
	req := func(i int, kv ...any) Req {
		tc := cases[i]
		up := tc.upstream
		if up == "" {
			up = "llm"
		}
		return cacheReq(up, stalePath(tc.name), append([]any{"body", map[string]any{"model": "m-" + tc.name, "prompt": "p"}}, kv...)...)
	}
	stored := make([]Resp, len(cases))
	start := time.Now()
	for i := range cases {
		stored[i] = f.Call(t, req(i))
		wantMiss(t, stored[i])
	}
	// Open the breaker of the "breaker open" case's model on another path.
	for range 2 {
		u.Set("/fail", Behavior{Status: 503})
		r := f.Call(t, callReq("llm", "/fail", "body", map[string]any{"model": "m-breaker open"}))
		wantError(t, r, "upstream_status", true)
	}
	// fender's clock is not ours to move: wait the TTL out.
	time.Sleep(time.Until(start.Add(200*time.Millisecond + 300*time.Millisecond)))

	staleAnswers := 0
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := stalePath(tc.name)
			u.Set(path, tc.fail)
			var r Resp
			elapsed := timed(func() { r = f.Call(t, req(i, tc.extra...)) })
			if !tc.stale {
				wantError(t, r, "upstream_status", false)
				wantStatus(t, r, 404)
				if r.Meta != nil && (r.Meta.Stale || r.Meta.Fallback != "") {
					t.Errorf("meta: got stale %v, fallback %q, want false, \"\" (answer %s)", r.Meta.Stale, r.Meta.Fallback, r.Raw)
				}
				return
			}
			staleAnswers++
			wantFallback(t, r, "stale", true)
			wantStatus(t, r, 200)
			wantSameBody(t, r, stored[i])
			if tc.maxTime > 0 && elapsed > tc.maxTime+slack {
				t.Errorf("elapsed: got %v, want at most %v", elapsed, tc.maxTime+slack)
			}
			if tc.name == "breaker open" {
				wantUpstreamHits(t, u, path, 1)
				wantBreaker(t, r, "open")
			} else {
				wantUpstreamHits(t, u, path, 2)
			}
		})
	}
	if s := fenderStats(t, f); int(s.Fallbacks) != staleAnswers {
		t.Errorf("stats fallbacks: got %v, want %d stale answers (%s)", s.Fallbacks, staleAnswers, s.Raw)
	}
}

// stalePath is the path of a stale test case.
func stalePath(name string) string { return "/stale/" + strings.ReplaceAll(name, " ", "-") }

// TestStaleExpired checks that past TTL + cache_stale the entry is gone:
// the failure is answered (SPEC 4).
func TestStaleExpired(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, staleEnv(upstreams("llm", u.URL), "200ms", "200ms"))
	start := time.Now()
	wantMiss(t, f.Call(t, cacheReq("llm", "/gone")))
	time.Sleep(time.Until(start.Add(400*time.Millisecond + 300*time.Millisecond)))
	u.Set("/gone", Behavior{Status: 503})
	r := f.Call(t, cacheReq("llm", "/gone"))
	wantError(t, r, "upstream_status", true)
	wantStatus(t, r, 503)
	wantUpstreamHits(t, u, "/gone", 2)
}

// fallbackEnv is three upstreams, llm falling back to small with the model
// phi3-mini, then to tiny; single attempts of at most 300ms.
func fallbackEnv(llm, small, tiny *modelUpstream, policies string) map[string]string {
	env := cacheEnv(upstreams("llm", llm.URL, "small", small.URL, "tiny", tiny.URL))
	env["FENDER_POLICIES"] = policies
	env["FENDER_TIMEOUT"] = "300ms"
	return env
}

const fallbackPolicies = `{"llm":{"retries":0,"fallback":["small:phi3-mini","tiny"]}}`

// TestFallbackUpstreams checks policy fallback: when llm fails transiently
// and no stale entry exists, small is called with body.model replaced by
// phi3-mini; when small fails too, tiny with the original body; a
// permanent failure does not fall back; it all happens within the request's
// deadline; a stale entry comes before the fallbacks (SPEC 4).
func TestFallbackUpstreams(t *testing.T) {
	t.Parallel()
	llm, small, tiny := newModelUpstream(t), newModelUpstream(t), newModelUpstream(t)
	f := startFender(t, fallbackEnv(llm, small, tiny, fallbackPolicies))
	body := map[string]any{"model": "phi3", "prompt": "hi", "stream": false}
	call := func(path string, kv ...any) (Resp, time.Duration) {
		var r Resp
		d := timed(func() { r = f.Call(t, cacheReq("llm", path, append([]any{"body", maps.Clone(body)}, kv...)...)) })
		return r, d
	}
	// A stale entry for the last case, stored first so its TTL runs out
	// while the others run.
	staleStart := time.Now()
	stored, _ := call("/fb/stale", "cache_ttl_ms", 200)
	wantMiss(t, stored)

	// wantSent checks what the upstream received on path: one request with
	// body.model model and the rest of the body unchanged.
	wantSent := func(t *testing.T, up *modelUpstream, path, model string) {
		t.Helper()
		got := up.Received(path)
		if len(got) != 1 {
			t.Fatalf("requests to %s: got %d, want 1", path, len(got))
		}
		want := `{"model":"` + model + `","prompt":"hi","stream":false}`
		if !jsonEqual(t, got[0].Body, want) {
			t.Errorf("body received: got %s, want %s", got[0].Body, want)
		}
		if got[0].Method != "POST" {
			t.Errorf("method received: got %s, want POST", got[0].Method)
		}
	}

	t.Run("small answers", func(t *testing.T) {
		llm.Set("/fb/1", Behavior{Status: 503})
		r, _ := call("/fb/1")
		wantFallback(t, r, "small:phi3-mini", false)
		if a := answerOf(t, r); a.Model != "phi3-mini" {
			t.Errorf("answer's model: got %q, want phi3-mini from small", a.Model)
		}
		wantUpstreamHits(t, llm, "/fb/1", 1)
		wantSent(t, small, "/fb/1", "phi3-mini")
		wantUpstreamHits(t, tiny, "/fb/1", 0)
	})
	t.Run("reset, small answers", func(t *testing.T) {
		llm.Set("/fb/2", Behavior{Reset: true})
		r, _ := call("/fb/2")
		wantFallback(t, r, "small:phi3-mini", false)
		wantSent(t, small, "/fb/2", "phi3-mini")
	})
	t.Run("small fails, tiny answers", func(t *testing.T) {
		llm.Set("/fb/3", Behavior{Status: 503})
		small.Set("/fb/3", Behavior{Status: 502})
		r, _ := call("/fb/3")
		wantFallback(t, r, "tiny", false)
		if a := answerOf(t, r); a.Model != "phi3" {
			t.Errorf("answer's model: got %q, want phi3 from tiny", a.Model)
		}
		wantUpstreamHits(t, small, "/fb/3", 1)
		wantSent(t, tiny, "/fb/3", "phi3")
	})
	t.Run("permanent failure", func(t *testing.T) {
		llm.Set("/fb/4", Behavior{Status: 400})
		r, _ := call("/fb/4")
		wantError(t, r, "upstream_status", false)
		wantStatus(t, r, 400)
		wantUpstreamHits(t, small, "/fb/4", 0)
		wantUpstreamHits(t, tiny, "/fb/4", 0)
	})
	t.Run("all fail", func(t *testing.T) {
		for _, up := range []*modelUpstream{llm, small, tiny} {
			up.Set("/fb/5", Behavior{Status: 503})
		}
		r, _ := call("/fb/5")
		if r.OK || r.Error == nil || !r.Error.Retryable {
			t.Errorf("got %s, want a retryable failure", r.Raw)
		}
		for _, up := range []*modelUpstream{llm, small, tiny} {
			wantUpstreamHits(t, up, "/fb/5", 1)
		}
	})
	t.Run("hanging llm, answer in time", func(t *testing.T) {
		llm.Set("/fb/6", Behavior{Hang: true})
		r, elapsed := call("/fb/6", "timeout_ms", 1000)
		wantFallback(t, r, "small:phi3-mini", false)
		wantBetween(t, "elapsed", elapsed, 250*time.Millisecond, 1050*time.Millisecond)
		wantSent(t, small, "/fb/6", "phi3-mini")
	})
	t.Run("one deadline for all", func(t *testing.T) {
		for _, up := range []*modelUpstream{llm, small, tiny} {
			up.Set("/fb/7", Behavior{Hang: true})
		}
		// 300ms on llm, 300ms on small, then tiny has 100ms left.
		r, elapsed := call("/fb/7", "timeout_ms", 700)
		wantError(t, r, "timeout", true)
		wantBetween(t, "elapsed", elapsed, 550*time.Millisecond, 750*time.Millisecond+slack)
	})
	t.Run("stale first", func(t *testing.T) {
		time.Sleep(time.Until(staleStart.Add(200*time.Millisecond + 300*time.Millisecond)))
		llm.Set("/fb/stale", Behavior{Status: 503})
		r, _ := call("/fb/stale")
		wantFallback(t, r, "stale", true)
		wantSameBody(t, r, stored)
		wantUpstreamHits(t, small, "/fb/stale", 0)
		wantUpstreamHits(t, tiny, "/fb/stale", 0)
	})
}

// TestFallbackBreaker checks that each fallback goes through its own
// breaker: with small's breaker for phi3-mini open, a fallback skips small
// and tiny answers (SPEC 3, 4).
func TestFallbackBreaker(t *testing.T) {
	t.Parallel()
	llm, small, tiny := newModelUpstream(t), newModelUpstream(t), newModelUpstream(t)
	f := startFender(t, fallbackEnv(llm, small, tiny,
		`{"llm":{"retries":0,"fallback":["small:phi3-mini","tiny"]},"small":{"breaker_failures":2,"breaker_cooldown":"1m"}}`))
	small.Set("/bad", Behavior{Status: 503})
	for range 2 {
		r := f.Call(t, callReq("small", "/bad", "body", map[string]any{"model": "phi3-mini"}))
		wantError(t, r, "upstream_status", true)
	}
	h := f.Call(t, Req{"op": "health"})
	if got := h.Upstreams["small"].Breakers["phi3-mini"]; got != "open" {
		t.Fatalf("upstreams.small.breakers.phi3-mini: got %q, want open (answer %s)", got, h.Raw)
	}

	llm.Set("/fb", Behavior{Status: 503})
	r := f.Call(t, cacheReq("llm", "/fb", "body", map[string]any{"model": "phi3", "prompt": "hi"}))
	wantFallback(t, r, "tiny", false)
	wantUpstreamHits(t, llm, "/fb", 1)
	wantUpstreamHits(t, small, "/fb", 0)
	if got := tiny.Received("/fb"); len(got) != 1 || got[0].Model() != "phi3" {
		t.Errorf("requests to tiny: got %v, want 1 with model phi3", got)
	}
	if s := fenderStats(t, f); s.Fallbacks != 1 {
		t.Errorf("stats fallbacks: got %v, want 1 (%s)", s.Fallbacks, s.Raw)
	}
}
