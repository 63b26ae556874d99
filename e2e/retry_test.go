package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestRetryAfter checks that a 429 or 503 with Retry-After (seconds or an
// HTTP date) makes fender wait at least that long before the retry, which
// then succeeds (SPEC 2).
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, query string
		minWait     time.Duration
	}{
		// An HTTP date has whole seconds: "now + 2s" is at least 1s away.
		{"seconds", "fail=1&status=429&ra=1", time.Second},
		{"http date", "fail=1&status=503&ra=date:2", time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			f := startFender(t, fastRetries(upstreams("up", u.URL)))
			var r Resp
			elapsed := timed(func() { r = f.Call(t, callReq("up", "/flaky?"+tc.query)) })
			wantOK(t, r)
			wantAttempts(t, r, 2)
			wantHits(t, u, "/flaky", 2)
			// Lower bounds are firm but for a few ms of clock granularity.
			if lo := tc.minWait - 50*time.Millisecond; elapsed < lo {
				t.Errorf("elapsed: got %v, want at least %v", elapsed, lo)
			}
			if hits := u.HitTimes("/flaky"); len(hits) == 2 {
				if gap := hits[1].Sub(hits[0]); gap < tc.minWait-50*time.Millisecond {
					t.Errorf("gap between attempts: got %v, want at least %v", gap, tc.minWait)
				}
			}
			if elapsed > tc.minWait+time.Second+slack {
				t.Errorf("elapsed: got %v, want about %v", elapsed, tc.minWait)
			}
		})
	}
}

// TestRetryAfterPastDeadline checks that when Retry-After would pass the
// deadline fender answers at once with the last answer (SPEC 2).
func TestRetryAfterPastDeadline(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, fastRetries(upstreams("up", u.URL)))
	for _, tc := range []struct {
		path   string
		status int
	}{{"/429?ra=30", 429}, {"/503-retry-after?ra=30", 503}} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			var r Resp
			elapsed := timed(func() { r = f.Call(t, callReq("up", tc.path, "retries", 3, "timeout_ms", 2000)) })
			wantError(t, r, "upstream_status", true)
			wantStatus(t, r, tc.status)
			wantAttempts(t, r, 1)
			if elapsed > time.Second {
				t.Errorf("elapsed: got %v, want an answer at once, well before the 2s deadline", elapsed)
			}
		})
	}
	wantHits(t, u, "/429", 1)
	wantHits(t, u, "/503-retry-after", 1)
}

// TestBackoffExponential checks the backoff between attempts with no jitter:
// 100, 200, 400ms (SPEC 2).
func TestBackoffExponential(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":          upstreams("up", u.URL),
		"FENDER_BACKOFF_INITIAL":    "100ms",
		"FENDER_BACKOFF_MAX":        "10s",
		"FENDER_BACKOFF_MULTIPLIER": "2",
		"FENDER_JITTER":             "0",
		"FENDER_BREAKER_FAILURES":   "1000",
		"FENDER_RETRY_BUDGET_MIN":   "100",
		"FENDER_DEADLINE":           "20s",
	})
	var r Resp
	elapsed := timed(func() { r = f.Call(t, callReq("up", "/status/503", "retries", 3)) })
	wantError(t, r, "upstream_status", true)
	wantAttempts(t, r, 4)
	wantHits(t, u, "/status/503", 4)
	wantBetween(t, "elapsed", elapsed, 680*time.Millisecond, 700*time.Millisecond+slack)
	wantGaps(t, u.HitTimes("/status/503"), []time.Duration{100, 200, 400})
}

// TestBackoffCapped checks that the backoff stops growing at
// FENDER_BACKOFF_MAX: 100, 150, 150, 150ms (SPEC 2).
func TestBackoffCapped(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":        upstreams("up", u.URL),
		"FENDER_BACKOFF_INITIAL":  "100ms",
		"FENDER_BACKOFF_MAX":      "150ms",
		"FENDER_JITTER":           "0",
		"FENDER_BREAKER_FAILURES": "1000",
		"FENDER_RETRY_BUDGET_MIN": "100",
	})
	r := f.Call(t, callReq("up", "/status/503", "retries", 4))
	wantError(t, r, "upstream_status", true)
	wantAttempts(t, r, 5)
	wantGaps(t, u.HitTimes("/status/503"), []time.Duration{100, 150, 150, 150})
}

// wantGaps checks the time between consecutive attempts against the backoff
// in ms: at least the backoff, and less than the next doubling.
func wantGaps(t testing.TB, hits []time.Time, backoffMS []time.Duration) {
	t.Helper()
	if len(hits) != len(backoffMS)+1 {
		t.Fatalf("attempts: got %d, want %d", len(hits), len(backoffMS)+1)
	}
	for i, ms := range backoffMS {
		want := ms * time.Millisecond
		gap := hits[i+1].Sub(hits[i])
		if gap < want-10*time.Millisecond || gap > 2*want+slack/2 {
			t.Errorf("gap before retry %d: got %v, want about %v", i+1, gap.Round(time.Millisecond), want)
		}
	}
}

// TestBackoffPastDeadline checks that when a backoff would pass the deadline
// fender answers at once with the last failure (SPEC 2).
func TestBackoffPastDeadline(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":       upstreams("up", u.URL),
		"FENDER_BACKOFF_INITIAL": "3s",
		"FENDER_BACKOFF_MAX":     "3s",
		"FENDER_JITTER":          "0",
	})
	var r Resp
	elapsed := timed(func() { r = f.Call(t, callReq("up", "/status/503", "retries", 3, "timeout_ms", 1500)) })
	wantError(t, r, "upstream_status", true)
	wantStatus(t, r, 503)
	wantAttempts(t, r, 1)
	wantHits(t, u, "/status/503", 1)
	if elapsed > time.Second {
		t.Errorf("elapsed: got %v, want an answer at once, well before the 1.5s deadline", elapsed)
	}
}

// TestRetryBudgetZero checks that with no retry budget a failing call makes
// a single attempt (SPEC 2).
func TestRetryBudgetZero(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := fastRetries(upstreams("up", u.URL))
	env["FENDER_RETRY_BUDGET"] = "0"
	env["FENDER_RETRY_BUDGET_MIN"] = "0"
	f := startFender(t, env)
	r := f.Call(t, callReq("up", "/status/503", "retries", 3))
	wantError(t, r, "upstream_status", true)
	wantAttempts(t, r, 1)
	wantHits(t, u, "/status/503", 1)
}

// TestRetryBudgetMin checks retry_budget_min: with a budget of 0 and a
// minimum of 1, of 3 concurrent failing calls only one retries while its
// retry is in flight; the others answer after one attempt (SPEC 2).
func TestRetryBudgetMin(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":        upstreams("up", u.URL),
		"FENDER_RETRY_BUDGET":     "0",
		"FENDER_RETRY_BUDGET_MIN": "1",
		"FENDER_BACKOFF_INITIAL":  "500ms",
		"FENDER_BACKOFF_MAX":      "500ms",
		"FENDER_JITTER":           "0",
		"FENDER_RETRIES":          "1",
		"FENDER_BREAKER_FAILURES": "1000",
	})
	c := f.Dial(t)
	var chans []<-chan Resp
	for i := range 3 {
		chans = append(chans, c.Send(t, callReq("up", fmt.Sprintf("/status/503?i=%d", i))))
	}
	var attempts []int
	for _, ch := range chans {
		r := c.Wait(t, ch)
		wantError(t, r, "upstream_status", true)
		attempts = append(attempts, r.Attempts())
	}
	slices.Sort(attempts)
	if want := []int{1, 1, 2}; !slices.Equal(attempts, want) {
		t.Errorf("attempts of the 3 calls: got %v, want %v", attempts, want)
	}
	wantHits(t, u, "/status/503", 4)
}
