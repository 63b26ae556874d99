package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestConfigErrors checks that a bad value in the environment stops fender
// at start with exit status 2 and a line on stderr naming the variable
// (SPEC 7).
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, variable, value string
	}{
		{"retries not a number", "FENDER_RETRIES", "abc"},
		{"retries negative", "FENDER_RETRIES", "-1"},
		{"jitter over 1", "FENDER_JITTER", "2"},
		{"jitter negative", "FENDER_JITTER", "-0.1"},
		{"timeout not a duration", "FENDER_TIMEOUT", "soon"},
		{"deadline negative", "FENDER_DEADLINE", "-1s"},
		{"backoff multiplier not a number", "FENDER_BACKOFF_MULTIPLIER", "x2"},
		{"retry budget over 1", "FENDER_RETRY_BUDGET", "1.5"},
		{"breaker failures not a number", "FENDER_BREAKER_FAILURES", "many"},
		{"breaker cooldown not a duration", "FENDER_BREAKER_COOLDOWN", "30"},
		{"max inflight negative", "FENDER_MAX_INFLIGHT", "-3"},
		{"max request bytes not a number", "FENDER_MAX_REQUEST_BYTES", "big"},
		{"drain timeout not a duration", "FENDER_DRAIN_TIMEOUT", "forever"},
		{"upstreams malformed", "FENDER_UPSTREAMS", "bad"},
		{"policies not JSON", "FENDER_POLICIES", "{bad"},
		{"policies unknown key", "FENDER_POLICIES", `{"up":{"nope":1}}`},
		{"policies negative retries", "FENDER_POLICIES", `{"up":{"retries":-1}}`},
		{"policies jitter over 1", "FENDER_POLICIES", `{"up":{"jitter":3}}`},
		{"policies bad duration", "FENDER_POLICIES", `{"up":{"timeout":"soon"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"FENDER_UPSTREAMS": upstreams("up", "http://127.0.0.1:1")}
			env[tc.variable] = tc.value
			res := runFender(t, env)
			if res.Code != 2 {
				t.Errorf("exit status: got %d, want 2 (stderr: %s)", res.Code, tail(res.Stderr, 2048))
			}
			if !strings.Contains(res.Stderr, tc.variable) {
				t.Errorf("stderr does not name %s: %q", tc.variable, tail(res.Stderr, 2048))
			}
		})
	}
}

// TestPoliciesOverride checks that FENDER_POLICIES overrides the defaults
// for one upstream only, durations in Go syntax included (SPEC 7).
func TestPoliciesOverride(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := fastRetries(upstreams("strict", u.URL, "loose", u.URL, "quick", u.URL))
	env["FENDER_POLICIES"] = `{"strict":{"retries":0},"quick":{"timeout":"200ms","retries":1}}`
	f := startFender(t, env)

	t.Run("strict", func(t *testing.T) {
		r := f.Call(t, callReq("strict", "/status/502"))
		wantError(t, r, "upstream_status", true)
		wantAttempts(t, r, 1)
		wantHits(t, u, "/status/502", 1)
	})
	t.Run("loose", func(t *testing.T) {
		r := f.Call(t, callReq("loose", "/status/503"))
		wantError(t, r, "upstream_status", true)
		wantAttempts(t, r, 3)
		wantHits(t, u, "/status/503", 3)
	})
	t.Run("quick", func(t *testing.T) {
		var r Resp
		elapsed := timed(func() { r = f.Call(t, callReq("quick", "/hang")) })
		wantError(t, r, "timeout", true)
		wantAttempts(t, r, 2)
		wantBetween(t, "elapsed", elapsed, 390*time.Millisecond, 400*time.Millisecond+2*slack)
	})
}
