package e2e

import (
	"testing"
	"time"
)

func TestCoalesce(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	gate := make(chan struct{})
	u.Set("/slow", Behavior{Gate: gate, Delay: 100 * time.Millisecond})
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	const n = 20
	clients := []*Client{f.Dial(t), f.Dial(t), f.Dial(t), f.Dial(t)}
	chans := make([]<-chan Resp, n)
	for i := range n {
		c := clients[i%len(clients)]
		chans[i] = c.Send(t, cacheReq("llm", "/slow", "body", map[string]any{"model": "phi3", "prompt": "same"}))
		if i == 0 {
			u.WaitHits(t, "/slow", 1, 5*time.Second)
		}
	}
	if !waitInflight(t, f, n, 3*time.Second) {
		t.Logf("stats never showed %d calls in flight; releasing the upstream anyway", n)
	}
	close(gate)
	var answers []Resp
	for i, ch := range chans {
		answers = append(answers, clients[i%len(clients)].Wait(t, ch))
	}
	coalesced := 0
	for i, r := range answers {
		wantOK(t, r)
		wantSameBody(t, r, answers[0])
		if metaOf(t, r).Coalesced {
			coalesced++
		} else if i != 0 {
			t.Logf("answer %d not coalesced: %s", i, r.Raw)
		}
	}
	if coalesced != n-1 {
		t.Errorf("answers with meta.coalesced true: got %d, want %d", coalesced, n-1)
	}
	if answers[0].Meta != nil && answers[0].Meta.Coalesced {
		t.Errorf("the first call (the leader): meta.coalesced true, want false (answer %s)", answers[0].Raw)
	}
	wantUpstreamHits(t, u, "/slow", 1)
	if s := fenderStats(t, f); s.Coalesced != n-1 {
		t.Errorf("stats coalesced: got %v, want %d (%s)", s.Coalesced, n-1, s.Raw)
	}
	wantHit(t, f.Call(t, cacheReq("llm", "/slow", "body", map[string]any{"model": "phi3", "prompt": "same"})))
}

// TestCoalesceWaiterTimeout checks that a waiter with a short timeout_ms
// stops waiting at its own deadline (answered timeout) while the shared
// call goes on for the others (SPEC 1, 4).
func TestCoalesceWaiterTimeout(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	gate := make(chan struct{})
	u.Set("/slow", Behavior{Gate: gate})
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	c := f.Dial(t)
	req := func(kv ...any) Req {
		return cacheReq("llm", "/slow", append([]any{"body", map[string]any{"prompt": "same"}}, kv...)...)
	}
	leader := c.Send(t, req())
	u.WaitHits(t, "/slow", 1, 5*time.Second)
	var others []<-chan Resp
	for range 5 {
		others = append(others, c.Send(t, req()))
	}
	var short Resp
	elapsed := timed(func() { short = c.Call(t, req("timeout_ms", 300)) })
	wantError(t, short, "timeout", true)
	wantBetween(t, "the short waiter's answer", elapsed, 250*time.Millisecond, 350*time.Millisecond+slack)

	close(gate)
	first := c.Wait(t, leader)
	wantOK(t, first)
	for _, ch := range others {
		r := c.Wait(t, ch)
		wantOK(t, r)
		wantSameBody(t, r, first)
		if !metaOf(t, r).Coalesced {
			t.Errorf("waiter: meta.coalesced false, want true (answer %s)", r.Raw)
		}
	}
	wantUpstreamHits(t, u, "/slow", 1)
	if n := u.Cancelled(); n != 0 {
		t.Errorf("upstream requests cancelled: got %d, want 0", n)
	}
}

// TestCoalesceDisconnect checks that a client that goes away while its
// call is shared does not cancel the upstream call for the others, whether
// it made the upstream call (the leader) or waited on it (SPEC 4, 8).
func TestCoalesceDisconnect(t *testing.T) {
	t.Parallel()
	for _, leaderLeaves := range []bool{true, false} {
		name := "waiter leaves"
		if leaderLeaves {
			name = "leader leaves"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			u := newModelUpstream(t)
			gate := make(chan struct{})
			u.Set("/slow", Behavior{Gate: gate})
			f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
			req := func() Req { return cacheReq("llm", "/slow", "body", map[string]any{"prompt": "same"}) }
			leaving, staying := f.Dial(t), f.Dial(t)

			var mine <-chan Resp
			if leaderLeaves {
				leaving.Send(t, req())
			} else {
				mine = staying.Send(t, req())
			}
			u.WaitHits(t, "/slow", 1, 5*time.Second)
			var waiters []<-chan Resp
			for range 3 {
				waiters = append(waiters, staying.Send(t, req()))
			}
			if !leaderLeaves {
				leaving.Send(t, req())
			}
			inflight := 4
			if !leaderLeaves {
				inflight = 5
			}
			waitInflight(t, f, inflight, 3*time.Second)
			leaving.Close()
			// Give fender the time to notice the disconnect and, wrongly,
			// cancel the shared call; nothing outside can signal that.
			time.Sleep(300 * time.Millisecond)
			close(gate)
			if mine != nil {
				waiters = append(waiters, mine)
			}
			var first Resp
			for i, ch := range waiters {
				r := staying.Wait(t, ch)
				wantOK(t, r)
				if i == 0 {
					first = r
				} else {
					wantSameBody(t, r, first)
				}
			}
			wantUpstreamHits(t, u, "/slow", 1)
			if n := u.Cancelled(); n != 0 {
				t.Errorf("upstream requests cancelled: got %d, want 0", n)
			}
		})
	}
}

// TestCoalesceFailureNotCached checks a shared call that fails (a slow 503,
// no retries): every waiter gets the failure, and it is not cached, so a
// later call reaches the upstream again (SPEC 4).
func TestCoalesceFailureNotCached(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	gate := make(chan struct{})
	u.Set("/slow503", Behavior{Gate: gate, Status: 503})
	f := startFender(t, cacheEnv(upstreams("llm", u.URL)))
	c := f.Dial(t)
	req := func() Req {
		return cacheReq("llm", "/slow503", "retries", 0, "body", map[string]any{"prompt": "same"})
	}
	chans := []<-chan Resp{c.Send(t, req())}
	u.WaitHits(t, "/slow503", 1, 5*time.Second)
	for range 4 {
		chans = append(chans, c.Send(t, req()))
	}
	waitInflight(t, f, 5, 3*time.Second)
	close(gate)
	coalesced := 0
	for _, ch := range chans {
		r := c.Wait(t, ch)
		wantError(t, r, "upstream_status", true)
		wantStatus(t, r, 503)
		if r.Meta != nil && r.Meta.Coalesced {
			coalesced++
		}
	}
	if coalesced != 4 {
		t.Errorf("failed answers with meta.coalesced true: got %d, want 4", coalesced)
	}
	wantUpstreamHits(t, u, "/slow503", 1)
	r := f.Call(t, req())
	wantError(t, r, "upstream_status", true)
	wantUpstreamHits(t, u, "/slow503", 2)
}

// TestCacheBoundsEntries checks FENDER_CACHE_MAX_ENTRIES: after 200
// distinct cacheable calls at most 50 entries are kept, the latest among
// them (SPEC 4, 5).
