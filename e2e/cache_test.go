package e2e

import (
	"maps"
	"testing"
	"time"
)

// cacheEnv is an environment for the cache tests: single attempts and a
// breaker that never opens, so that upstream requests can be counted.
func cacheEnv(ups string) map[string]string {
	return map[string]string{
		"FENDER_UPSTREAMS":        ups,
		"FENDER_RETRIES":          "0",
		"FENDER_BREAKER_FAILURES": "1000",
		"FENDER_RETRY_BUDGET_MIN": "100",
		"FENDER_DEADLINE":         "20s",
	}
}

// TestCacheHit checks that the same call twice is answered the second time
// from the cache: meta.cached true, meta.attempts 0, the same body, one
// upstream request (SPEC 1, 4).
func TestCacheHit(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	req := func() Req {
		return cacheReq("llm", "/api/generate", "body", map[string]any{"model": "phi3", "prompt": "hello", "stream": false})
	}
	first := f.Call(t, req())
	wantMiss(t, first)
	second := f.Call(t, req())
	wantHit(t, second)
	wantSameBody(t, second, first)
	wantStatus(t, second, 200)
	if m := metaOf(t, second); m.Upstream != "llm" || m.Model != "phi3" {
		t.Errorf("meta upstream, model: got %q, %q, want \"llm\", \"phi3\" (answer %s)", m.Upstream, m.Model, second.Raw)
	}
	if ct, _ := second.Header("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type of the cached answer: got %q, want application/json", ct)
	}
	wantUpstreamHits(t, u, "/api/generate", 1)
}

// TestCacheKey checks what the cache key is made of: object keys are sorted
// at every depth, while the method, path, model, any body value, the order
// of an array and the spelling of a number (kept exact) make another key
// (SPEC 4).
func TestCacheKey(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	base := cacheReq("llm", "/k", "body", raw(`{"a":1,"b":{"c":2,"d":3}}`))
	first := f.Call(t, base)
	wantMiss(t, first)

	for _, tc := range []struct {
		name string
		req  Req
		hit  bool
	}{
		{"keys reordered at every depth", cacheReq("llm", "/k", "body", raw(`{"b":{"d":3,"c":2},"a":1}`)), true},
		{"same request", cacheReq("llm", "/k", "method", "POST", "body", raw(`{"a":1,"b":{"c":2,"d":3}}`)), true},
		{"other method", cacheReq("llm", "/k", "method", "PUT", "body", raw(`{"a":1,"b":{"c":2,"d":3}}`)), false},
		{"other path", cacheReq("llm", "/k2", "body", raw(`{"a":1,"b":{"c":2,"d":3}}`)), false},
		{"other query", cacheReq("llm", "/k?q=1", "body", raw(`{"a":1,"b":{"c":2,"d":3}}`)), false},
		{"model field", cacheReq("llm", "/k", "model", "m1", "body", raw(`{"a":1,"b":{"c":2,"d":3}}`)), false},
		{"other model field", cacheReq("llm", "/k", "model", "m2", "body", raw(`{"a":1,"b":{"c":2,"d":3}}`)), false},
		{"other nested value", cacheReq("llm", "/k", "body", raw(`{"a":1,"b":{"c":2,"d":4}}`)), false},
		{"other top value", cacheReq("llm", "/k", "body", raw(`{"a":"1","b":{"c":2,"d":3}}`)), false},
		{"no body", cacheReq("llm", "/k"), false},
		{"array", cacheReq("llm", "/k", "body", raw(`{"a":[1,2]}`)), false},
		{"array reversed", cacheReq("llm", "/k", "body", raw(`{"a":[2,1]}`)), false},
		{"number 1", cacheReq("llm", "/n", "body", raw(`{"x":1}`)), false},
		{"number 1.0", cacheReq("llm", "/n", "body", raw(`{"x":1.0}`)), false},
		{"number 1e0", cacheReq("llm", "/n", "body", raw(`{"x":1e0}`)), false},
		{"number 1 again", cacheReq("llm", "/n", "body", raw(`{"x":1}`)), true},
		{"number 1.0 again", cacheReq("llm", "/n", "body", raw(`{"x":1.0}`)), true},
		{"number 1e0 again", cacheReq("llm", "/n", "body", raw(`{"x":1e0}`)), true},
		{"reordered again", cacheReq("llm", "/k", "body", raw(`{"b":{"c":2,"d":3},"a":1}`)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.Call(t, tc.req)
			if tc.hit {
				wantHit(t, r)
				if tc.req["path"] == "/k" {
					wantSameBody(t, r, first)
				}
			} else {
				wantMiss(t, r)
			}
		})
	}
	wantUpstreamHits(t, u, "/n", 3)
}

// TestCacheVaryHeaders checks cache_vary_headers: with X-Tenant in the
// policy, requests that differ only in X-Tenant miss; without it they hit
// (SPEC 4).
func TestCacheVaryHeaders(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	env := cacheEnv(upstreams("llm", u.URL, "plain", u.URL))
	env["FENDER_POLICIES"] = `{"llm":{"cache_vary_headers":["X-Tenant"]}}`
	f := startFender(t, env)
	call := func(upstream, tenant, other string) Resp {
		return f.Call(t, cacheReq(upstream, "/v", "body", map[string]any{"prompt": "p"},
			"headers", map[string]string{"X-Tenant": tenant, "X-Other": other}))
	}

	t.Run("vary", func(t *testing.T) {
		a := call("llm", "a", "1")
		wantMiss(t, a)
		wantMiss(t, call("llm", "b", "1"))
		r := call("llm", "a", "1")
		wantHit(t, r)
		wantSameBody(t, r, a)
		r = call("llm", "a", "2") // a header not in the list does not vary
		wantHit(t, r)
		wantSameBody(t, r, a)
	})
	t.Run("no vary", func(t *testing.T) {
		a := call("plain", "a", "1")
		wantMiss(t, a)
		r := call("plain", "b", "2")
		wantHit(t, r)
		wantSameBody(t, r, a)
	})
	wantUpstreamHits(t, u, "/v", 3)
}

// TestCacheOnly2xx checks that only 2xx answers are stored: after a 404, a
// 503 or a 302 the next identical call reaches the upstream again, while a
// 201 is served from the cache (SPEC 4).
func TestCacheOnly2xx(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	for _, tc := range []struct {
		status int
		stored bool
	}{{404, false}, {503, false}, {302, false}, {201, true}} {
		t.Run(pathf("%d", tc.status), func(t *testing.T) {
			path := pathf("/s/%d", tc.status)
			u.Set(path, Behavior{Status: tc.status})
			for i := range 2 {
				r := f.Call(t, cacheReq("llm", path, "body", map[string]any{"prompt": "p"}))
				wantStatus(t, r, tc.status)
				if i == 1 && tc.stored {
					wantHit(t, r)
				} else if r.Meta != nil && r.Meta.Cached {
					t.Errorf("call %d: meta.cached true, want false (answer %s)", i+1, r.Raw)
				}
			}
			want := 2
			if tc.stored {
				want = 1
			}
			wantUpstreamHits(t, u, path, want)
		})
	}
}

// TestCacheBypass checks cache:"bypass": it neither reads the cache (an
// entry exists, the upstream is called) nor writes it (a later "use" call
// misses, and the stored entry keeps its body) (SPEC 1, 4).
func TestCacheBypass(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	req := func(mode string) Req {
		r := cacheReq("llm", "/b", "body", map[string]any{"prompt": "p"})
		if mode != "" {
			r["cache"] = mode
		}
		return r
	}
	wantMiss(t, f.Call(t, req("bypass")))
	used := f.Call(t, req("use")) // bypass did not write
	wantMiss(t, used)
	wantHit(t, f.Call(t, req("")))
	bypassed := f.Call(t, req("bypass")) // bypass does not read
	wantMiss(t, bypassed)
	if answerOf(t, bypassed).N == answerOf(t, used).N {
		t.Errorf("bypass body: got the cached answer %s, want a new upstream answer", bypassed.Body)
	}
	r := f.Call(t, req("use"))
	wantHit(t, r)
	wantSameBody(t, r, used)
	wantUpstreamHits(t, u, "/b", 3)
}

// TestCacheRefresh checks cache:"refresh": it does not read (the upstream
// is called although an entry exists) but writes (a following "use" call is
// a hit with the new body) (SPEC 1, 4).
func TestCacheRefresh(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	req := func(mode string) Req {
		return cacheReq("llm", "/r", "cache", mode, "body", map[string]any{"prompt": "p"})
	}
	old := f.Call(t, req("use"))
	wantMiss(t, old)
	fresh := f.Call(t, req("refresh"))
	wantMiss(t, fresh)
	if answerOf(t, fresh).N == answerOf(t, old).N {
		t.Errorf("refresh body: got the cached answer %s, want a new upstream answer", fresh.Body)
	}
	r := f.Call(t, req("use"))
	wantHit(t, r)
	wantSameBody(t, r, fresh)
	wantUpstreamHits(t, u, "/r", 2)
}

// TestCacheTTLZero checks that cache_ttl_ms 0 does not store the answer
// (SPEC 1).
func TestCacheTTLZero(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	wantMiss(t, f.Call(t, cacheReq("llm", "/z", "cache_ttl_ms", 0)))
	wantMiss(t, f.Call(t, cacheReq("llm", "/z")))
	wantHit(t, f.Call(t, cacheReq("llm", "/z")))
	wantUpstreamHits(t, u, "/z", 2)
}

// expiryCheck stores an answer for req, checks it is a hit while fresh and
// that after ttl (plus a margin) an identical call reaches the upstream.
func expiryCheck(t *testing.T, f *Fender, u *modelUpstream, store, req Req, ttl time.Duration, expires bool) {
	t.Helper()
	path := store["path"].(string)
	start := time.Now()
	first := f.Call(t, maps.Clone(store))
	wantMiss(t, first)
	r := f.Call(t, maps.Clone(req))
	if time.Since(start) < ttl/2 {
		wantHit(t, r)
	} else {
		t.Logf("the machine is slow: %v passed, not checking the hit before expiry", time.Since(start))
	}
	before := u.Hits(path)
	// fender's clock is not ours to move: wait the TTL out.
	time.Sleep(time.Until(start.Add(ttl + 300*time.Millisecond)))
	r = f.Call(t, maps.Clone(req))
	if expires {
		wantMiss(t, r)
		wantUpstreamHits(t, u, path, before+1)
	} else {
		wantHit(t, r)
		wantSameBody(t, r, first)
		wantUpstreamHits(t, u, path, before)
	}
}

// TestCacheTTLRequest checks that a short cache_ttl_ms expires: after it, a
// call reaches the upstream (SPEC 1, 4).
func TestCacheTTLRequest(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	expiryCheck(t, f, u, cacheReq("llm", "/t", "cache_ttl_ms", 300), cacheReq("llm", "/t"), 300*time.Millisecond, true)
}

// TestCacheTTLConfig checks the TTL from FENDER_CACHE_TTL and from the
// policy's cache_ttl, which overrides it per upstream (SPEC 4, 7).
func TestCacheTTLConfig(t *testing.T) {
	t.Parallel()
	const short = 300 * time.Millisecond
	for _, tc := range []struct {
		name     string
		ttl      string
		policies string
		upstream string
		expires  bool
	}{
		{"env short", "300ms", "", "llm", true},
		{"env short, policy long", "300ms", `{"llm":{"cache_ttl":"1m"}}`, "llm", false},
		{"env default, policy short", "", `{"llm":{"cache_ttl":"300ms"}}`, "llm", true},
		{"env default, policy short on another upstream", "", `{"other":{"cache_ttl":"300ms"}}`, "llm", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := newModelUpstream(t)
			env := cacheEnv(upstreams("llm", u.URL, "other", u.URL))
			if tc.ttl != "" {
				env["FENDER_CACHE_TTL"] = tc.ttl
			}
			if tc.policies != "" {
				env["FENDER_POLICIES"] = tc.policies
			}
			f := startFender(t, env)
			req := cacheReq(tc.upstream, "/ttl")
			expiryCheck(t, f, u, req, req, short, tc.expires)
		})
	}
}

// TestCacheStats checks the cache figures of the stats op, overall and per
// upstream: 1 miss then 3 hits is a hit rate of 0.75 (SPEC 5).
func TestCacheStats(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	for range 4 {
		wantOK(t, f.Call(t, cacheReq("llm", "/st", "body", map[string]any{"prompt": "p"})))
	}
	s := fenderStats(t, f)
	if s.CacheHits != 3 || s.CacheMisses != 1 || s.CacheHitRate != 0.75 {
		t.Errorf("stats cache_hits, cache_misses, cache_hit_rate: got %v, %v, %v, want 3, 1, 0.75 (%s)",
			s.CacheHits, s.CacheMisses, s.CacheHitRate, s.Raw)
	}
	if n := s.entries(t); n != 1 {
		t.Errorf("stats cache_entries: got %d, want 1", n)
	}
	if n := s.bytes(t); n < len(`{"n":1}`) {
		t.Errorf("stats cache_bytes: got %d, want at least the body's size", n)
	}
	g, ok := s.Upstreams["llm"]
	if !ok {
		t.Fatalf("stats: no upstreams.llm in %s", s.Raw)
	}
	if g.CacheHits != 3 || g.CacheMisses != 1 || g.CacheHitRate != 0.75 {
		t.Errorf("stats upstreams.llm cache_hits, cache_misses, cache_hit_rate: got %v, %v, %v, want 3, 1, 0.75 (%s)",
			g.CacheHits, g.CacheMisses, g.CacheHitRate, s.Raw)
	}
	wantUpstreamHits(t, u, "/st", 1)
}

// TestCoalesce sends 20 identical cacheable calls at once against a slow
// upstream, from 4 connections: the upstream sees 1 request, all 20 are
// answered ok with the same body, and exactly 19 carry meta.coalesced true
// (SPEC 4, 5).
