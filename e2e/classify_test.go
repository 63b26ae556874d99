package e2e

import (
	"fmt"
	"testing"
	"time"
)

// fastRetries is an environment with quick backoff and a breaker that never
// opens, so that tests can count attempts.
func fastRetries(ups string) map[string]string {
	return map[string]string{
		"FENDER_UPSTREAMS":        ups,
		"FENDER_RETRIES":          "2",
		"FENDER_BACKOFF_INITIAL":  "1ms",
		"FENDER_BACKOFF_MAX":      "2ms",
		"FENDER_BREAKER_FAILURES": "1000",
		"FENDER_RETRY_BUDGET_MIN": "100",
		"FENDER_DEADLINE":         "20s",
	}
}

// TestStatusClassification checks which upstream statuses are retried:
// 408, 429 and 5xx are (attempts = retries+1, retryable), other 4xx are not
// (attempts 1); 2xx and 3xx are a success. The failed answer carries the
// upstream's status and body (SPEC 1, 2).
func TestStatusClassification(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, fastRetries(upstreams("up", u.URL)))
	for _, tc := range []struct {
		status   int
		attempts int
		ok       bool
	}{
		{500, 3, false}, {502, 3, false}, {503, 3, false}, {504, 3, false},
		{408, 3, false}, {429, 3, false},
		{400, 1, false}, {401, 1, false}, {404, 1, false}, {409, 1, false}, {422, 1, false},
		{201, 1, true}, {301, 1, true},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			path := fmt.Sprintf("/status/%d", tc.status)
			r := f.Call(t, callReq("up", path))
			wantStatus(t, r, tc.status)
			wantAttempts(t, r, tc.attempts)
			wantHits(t, u, path, tc.attempts)
			if tc.ok {
				wantOK(t, r)
				return
			}
			wantError(t, r, "upstream_status", tc.attempts > 1)
			if !jsonEqual(t, string(r.Body), fmt.Sprintf(`{"status":%d}`, tc.status)) {
				t.Errorf("body: got %s, want the upstream's {\"status\":%d}", r.Body, tc.status)
			}
		})
	}
}

// TestRequestRetriesOverride checks that the request's retries field beats
// the policy: retries 4 gives 5 attempts, retries 0 gives 1 (SPEC 1, 2).
func TestRequestRetriesOverride(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, fastRetries(upstreams("up", u.URL)))
	for _, tc := range []struct{ retries, attempts int }{{4, 5}, {0, 1}} {
		t.Run(fmt.Sprint(tc.retries), func(t *testing.T) {
			path := fmt.Sprintf("/status/50%d", tc.retries)
			r := f.Call(t, callReq("up", path, "retries", tc.retries))
			wantError(t, r, "upstream_status", true)
			wantAttempts(t, r, tc.attempts)
			wantHits(t, u, path, tc.attempts)
		})
	}
}

// TestFlakyEventuallySucceeds checks that an upstream failing twice then
// answering is a success after 3 attempts (SPEC 2).
func TestFlakyEventuallySucceeds(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, fastRetries(upstreams("up", u.URL)))
	r := f.Call(t, callReq("up", "/flaky?fail=2", "retries", 3))
	wantOK(t, r)
	wantStatus(t, r, 200)
	wantAttempts(t, r, 3)
	wantHits(t, u, "/flaky", 3)
}

// TestResetIsRetried checks that a connection reset is retried and ends
// unavailable (SPEC 1, 2).
func TestResetIsRetried(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, fastRetries(upstreams("up", u.URL)))
	r := f.Call(t, callReq("up", "/reset"))
	wantError(t, r, "unavailable", true)
	wantAttempts(t, r, 3)
	wantHits(t, u, "/reset", 3)
}

// TestConnectionRefused checks that a refused connection is retried and ends
// unavailable (SPEC 1, 2).
func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	f := startFender(t, fastRetries(upstreams("dead", refusedURL(t))))
	r := f.Call(t, callReq("dead", "/ok"))
	wantError(t, r, "unavailable", true)
	wantAttempts(t, r, 3)
}

// TestPerAttemptTimeout checks that an attempt longer than FENDER_TIMEOUT is
// cut, retried, and the request ends timeout (SPEC 2).
func TestPerAttemptTimeout(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := fastRetries(upstreams("up", u.URL))
	env["FENDER_TIMEOUT"] = "200ms"
	f := startFender(t, env)
	var r Resp
	elapsed := timed(func() { r = f.Call(t, callReq("up", "/hang")) })
	wantError(t, r, "timeout", true)
	wantAttempts(t, r, 3)
	wantHits(t, u, "/hang", 3)
	wantBetween(t, "elapsed", elapsed, 3*200*time.Millisecond-30*time.Millisecond, 600*time.Millisecond+2*slack)
}

// TestSlowBodyTimesOut checks that a body that stalls counts against the
// per-attempt timeout: retried, then timeout (SPEC 2).
func TestSlowBodyTimesOut(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := fastRetries(upstreams("up", u.URL))
	env["FENDER_TIMEOUT"] = "200ms"
	f := startFender(t, env)
	var r Resp
	elapsed := timed(func() { r = f.Call(t, callReq("up", "/slowbody", "retries", 1, "timeout_ms", 5000)) })
	wantError(t, r, "timeout", true)
	wantAttempts(t, r, 2)
	wantHits(t, u, "/slowbody", 2)
	wantBetween(t, "elapsed", elapsed, 400*time.Millisecond-30*time.Millisecond, 400*time.Millisecond+2*slack)
}

// TestTimeoutMs checks that timeout_ms is the total deadline: a hanging
// upstream is answered timeout no later than timeout_ms plus slack (SPEC 2).
func TestTimeoutMs(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	for _, path := range []string{"/hang", "/slowbody"} {
		t.Run(path, func(t *testing.T) {
			var r Resp
			elapsed := timed(func() { r = f.Call(t, callReq("up", path, "timeout_ms", 300)) })
			wantError(t, r, "timeout", true)
			wantBetween(t, "elapsed", elapsed, 290*time.Millisecond, 300*time.Millisecond+slack)
		})
	}
}

// TestDeadlineBoundsRetries checks that retries stop at the deadline: many
// short attempts against a hanging upstream end timeout at timeout_ms, with
// only the attempts that fit (SPEC 2).
func TestDeadlineBoundsRetries(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := fastRetries(upstreams("up", u.URL))
	env["FENDER_TIMEOUT"] = "150ms"
	f := startFender(t, env)
	var r Resp
	elapsed := timed(func() { r = f.Call(t, callReq("up", "/hang", "retries", 20, "timeout_ms", 500)) })
	wantError(t, r, "timeout", true)
	wantBetween(t, "elapsed", elapsed, 490*time.Millisecond, 500*time.Millisecond+slack)
	// Attempts of 150ms fit 3 times in 500ms, a 4th is cut by the deadline;
	// allow one fewer on a loaded machine, never more.
	if got := u.Hits("/hang"); got < 2 || got > 4 {
		t.Errorf("upstream requests: got %d, want 3 or 4 attempts of 150ms in 500ms", got)
	}
	wantAttempts(t, r, u.Hits("/hang"))
}
