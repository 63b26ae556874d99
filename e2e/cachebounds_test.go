package e2e

import (
	"testing"
)

func TestCacheBoundsEntries(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	env := cacheEnv(upstreams("llm", u.URL))
	env["FENDER_CACHE_MAX_ENTRIES"] = "50"
	f := startFender(t, env)
	for i := range 200 {
		wantOK(t, f.Call(t, cacheReq("llm", pathf("/e/%d", i))))
	}
	s := fenderStats(t, f)
	if n := s.entries(t); n > 50 || n < 1 {
		t.Errorf("stats cache_entries: got %d, want 1..50", n)
	}
	wantHit(t, f.Call(t, cacheReq("llm", "/e/199")))
	wantMiss(t, f.Call(t, cacheReq("llm", "/e/0")))
	if n := fenderStats(t, f).entries(t); n > 50 {
		t.Errorf("stats cache_entries: got %d, want at most 50", n)
	}
}

// TestCacheBoundsBytes checks FENDER_CACHE_MAX_BYTES with 1 KB answers:
// cache_bytes stays at most 20000, each entry counts at least its body's
// size, and an answer larger than the whole bound does not break it
// (SPEC 4, 5).
func TestCacheBoundsBytes(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	env := cacheEnv(upstreams("llm", u.URL))
	env["FENDER_CACHE_MAX_BYTES"] = "20000"
	f := startFender(t, env)
	for i := range 60 {
		path := pathf("/kb/%d", i)
		u.Set(path, Behavior{Pad: 1000})
		wantOK(t, f.Call(t, cacheReq("llm", path)))
	}
	s := fenderStats(t, f)
	entries, size := s.entries(t), s.bytes(t)
	if size > 20000 || entries < 1 || entries > 20 {
		t.Errorf("stats cache_entries, cache_bytes: got %d, %d, want 1..20 entries within 20000 bytes", entries, size)
	}
	if size < entries*1000 {
		t.Errorf("stats cache_bytes: got %d for %d entries of 1 KB bodies, want at least %d", size, entries, entries*1000)
	}
	wantHit(t, f.Call(t, cacheReq("llm", "/kb/59")))

	u.Set("/huge", Behavior{Pad: 30000})
	wantOK(t, f.Call(t, cacheReq("llm", "/huge")))
	if size := fenderStats(t, f).bytes(t); size > 20000 {
		t.Errorf("stats cache_bytes after a 30 KB answer: got %d, want at most 20000", size)
	}
}

// TestCacheLRU checks that eviction drops the least recently used entry:
// with room for 3, cache A, B, C, read A, add D: A is still a hit and B is
// gone (SPEC 4).
func TestCacheLRU(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	env := cacheEnv(upstreams("llm", u.URL))
	env["FENDER_CACHE_MAX_ENTRIES"] = "3"
	f := startFender(t, env)
	call := func(name string) Resp { return f.Call(t, cacheReq("llm", "/"+name)) }
	for _, name := range []string{"A", "B", "C"} {
		wantMiss(t, call(name))
	}
	wantHit(t, call("A"))
	wantMiss(t, call("D"))
	t.Run("A kept", func(t *testing.T) { wantHit(t, call("A")) })
	t.Run("B evicted", func(t *testing.T) { wantMiss(t, call("B")) })
	wantUpstreamHits(t, u, "/A", 1)
	wantUpstreamHits(t, u, "/B", 2)
}

// TestCachePurge checks the purge admin op: purging one upstream answers
// the number of its entries dropped and leaves the others; purging with no
// upstream drops all (SPEC 5).
func TestCachePurge(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	f := startFender(t, cacheEnv(upstreams("llm", u.URL, "other", u.URL)))
	for _, p := range []string{"/p/1", "/p/2", "/p/3"} {
		wantMiss(t, f.Call(t, cacheReq("llm", p)))
	}
	wantMiss(t, f.Call(t, cacheReq("other", "/p/1")))

	if n := purge(t, f, "llm"); n != 3 {
		t.Errorf("purge llm: got purged %d, want 3", n)
	}
	wantMiss(t, f.Call(t, cacheReq("llm", "/p/1")))
	wantHit(t, f.Call(t, cacheReq("other", "/p/1")))
	if n := purge(t, f, ""); n != 2 {
		t.Errorf("purge all: got purged %d, want 2", n)
	}
	if n := fenderStats(t, f).entries(t); n != 0 {
		t.Errorf("stats cache_entries after purging all: got %d, want 0", n)
	}
	wantMiss(t, f.Call(t, cacheReq("other", "/p/1")))
	wantUpstreamHits(t, u, "/p/1", 4)
}
