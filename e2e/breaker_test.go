package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// breakerEnv is an environment with a breaker that opens after 3 failures
// and single-attempt calls.
func breakerEnv(ups, cooldown string) map[string]string {
	return map[string]string{
		"FENDER_UPSTREAMS":             ups,
		"FENDER_RETRIES":               "0",
		"FENDER_BREAKER_FAILURES":      "3",
		"FENDER_BREAKER_SUCCESSES":     "2",
		"FENDER_BREAKER_COOLDOWN":      cooldown,
		"FENDER_BREAKER_HALF_OPEN_MAX": "1",
		"FENDER_RETRY_BUDGET_MIN":      "100",
		"FENDER_BACKOFF_INITIAL":       "1ms",
		"FENDER_BACKOFF_MAX":           "2ms",
		"FENDER_DEADLINE":              "20s",
	}
}

// openBreaker makes 3 failing calls for model (given as the model field and
// as body.model) so that its breaker opens.
func openBreaker(t testing.TB, f *Fender, upstream, model string) {
	t.Helper()
	for i := range 3 {
		req := callReq(upstream, "/status/500")
		if model != "" {
			if i == 2 {
				req["body"] = map[string]any{"model": model, "prompt": "hi"}
			} else {
				req["model"] = model
			}
		}
		r := f.Call(t, req)
		wantError(t, r, "upstream_status", true)
		if i == 2 {
			wantBreaker(t, r, "open")
		}
	}
}

// TestBreakerOpensPerModel checks that 3 failures open the breaker of
// (upstream, model): the next call for that model is circuit_open without
// reaching the upstream, other models and the model-less breaker are not
// affected, health shows the state, and the transition is logged at warn
// (SPEC 3, 5, 9).
func TestBreakerOpensPerModel(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, breakerEnv(upstreams("up", u.URL), "10s"))
	openBreaker(t, f, "up", "m1")
	wantHits(t, u, "/status/500", 3)

	t.Run("model field", func(t *testing.T) {
		r := f.Call(t, callReq("up", "/ok", "model", "m1"))
		wantError(t, r, "circuit_open", true)
		wantBreaker(t, r, "open")
	})
	t.Run("body.model", func(t *testing.T) {
		r := f.Call(t, callReq("up", "/ok", "body", map[string]any{"model": "m1"}))
		wantError(t, r, "circuit_open", true)
		wantBreaker(t, r, "open")
		if r.Meta != nil && r.Meta.Model != "m1" {
			t.Errorf("meta.model: got %q, want \"m1\" from body.model", r.Meta.Model)
		}
	})
	t.Run("failing path", func(t *testing.T) {
		r := f.Call(t, callReq("up", "/status/500", "model", "m1"))
		wantError(t, r, "circuit_open", true)
		wantHits(t, u, "/status/500", 3)
	})
	wantHits(t, u, "/ok", 0)

	t.Run("other model", func(t *testing.T) {
		r := f.Call(t, callReq("up", "/ok", "model", "m2"))
		wantOK(t, r)
		wantBreaker(t, r, "closed")
	})
	t.Run("no model", func(t *testing.T) {
		r := f.Call(t, callReq("up", "/ok"))
		wantOK(t, r)
		wantBreaker(t, r, "closed")
	})
	wantHits(t, u, "/ok", 2)

	t.Run("health", func(t *testing.T) {
		r := f.Call(t, Req{"op": "health"})
		wantOK(t, r)
		b := r.Upstreams["up"].Breakers
		if b["m1"] != "open" || b["m2"] != "closed" {
			t.Errorf("upstreams.up.breakers: got %v, want m1 open and m2 closed (answer %s)", b, r.Raw)
		}
	})
	t.Run("log", func(t *testing.T) {
		found := f.WaitStderr(func(line string) bool {
			var ev map[string]any
			if json.Unmarshal([]byte(line), &ev) != nil || ev["level"] != "warn" {
				return false
			}
			return strings.Contains(line, "m1") && strings.Contains(line, "open")
		}, 3*time.Second)
		if !found {
			t.Errorf("stderr: no JSON line at level warn for the breaker of m1 opening")
		}
	})
}

// TestBreakerModelless checks that calls with no model share the upstream's
// own breaker, apart from the per-model ones (SPEC 3).
func TestBreakerModelless(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, breakerEnv(upstreams("up", u.URL), "10s"))
	openBreaker(t, f, "up", "")
	r := f.Call(t, callReq("up", "/ok"))
	wantError(t, r, "circuit_open", true)
	wantHits(t, u, "/ok", 0)
	r = f.Call(t, callReq("up", "/ok", "model", "m1"))
	wantOK(t, r)
	wantBreaker(t, r, "closed")
}

// TestBreakerCloses checks recovery: after the cooldown, breaker_successes
// (2) successes close the breaker, half_open in between (SPEC 3).
func TestBreakerCloses(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	const cooldown = 400 * time.Millisecond
	f := startFender(t, breakerEnv(upstreams("up", u.URL), cooldown.String()))
	openBreaker(t, f, "up", "m1")
	time.Sleep(cooldown + 200*time.Millisecond) // fender's clock is not ours to move

	r := f.Call(t, callReq("up", "/ok?n=1", "model", "m1"))
	wantOK(t, r)
	wantBreaker(t, r, "half_open")
	r = f.Call(t, callReq("up", "/ok?n=2", "model", "m1"))
	wantOK(t, r)
	wantBreaker(t, r, "closed")
	wantHits(t, u, "/ok", 2)

	h := f.Call(t, Req{"op": "health"})
	if got := h.Upstreams["up"].Breakers["m1"]; got != "closed" {
		t.Errorf("upstreams.up.breakers.m1: got %q, want closed", got)
	}
}

// TestBreakerHalfOpenFailureReopens checks that one failure in half-open
// opens the breaker again (SPEC 3).
func TestBreakerHalfOpenFailureReopens(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	const cooldown = 400 * time.Millisecond
	f := startFender(t, breakerEnv(upstreams("up", u.URL), cooldown.String()))
	openBreaker(t, f, "up", "m1")
	time.Sleep(cooldown + 200*time.Millisecond)

	r := f.Call(t, callReq("up", "/status/500", "model", "m1"))
	wantError(t, r, "upstream_status", true)
	wantBreaker(t, r, "open")
	wantHits(t, u, "/status/500", 4)

	r = f.Call(t, callReq("up", "/ok", "model", "m1"))
	wantError(t, r, "circuit_open", true)
	wantHits(t, u, "/ok", 0)
}

// TestBreakerHalfOpenMax checks that half-open lets one request through at a
// time: while the probe is in flight, another call is circuit_open
// (SPEC 3).
func TestBreakerHalfOpenMax(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	const cooldown = 400 * time.Millisecond
	f := startFender(t, breakerEnv(upstreams("up", u.URL), cooldown.String()))
	openBreaker(t, f, "up", "m1")
	time.Sleep(cooldown + 200*time.Millisecond)

	c := f.Dial(t)
	probe := c.Send(t, callReq("up", "/slow?ms=1500", "model", "m1"))
	u.WaitHits(t, "/slow", 1, 5*time.Second)

	r := c.Call(t, callReq("up", "/ok", "model", "m1"))
	wantError(t, r, "circuit_open", true)
	wantHits(t, u, "/ok", 0)

	r = c.Wait(t, probe)
	wantOK(t, r)
	wantBreaker(t, r, "half_open")
}

// TestRetriesStopWhenBreakerOpens checks that a request stops retrying as
// soon as its breaker opens (SPEC 2, 3).
func TestRetriesStopWhenBreakerOpens(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := breakerEnv(upstreams("up", u.URL), "10s")
	env["FENDER_BREAKER_FAILURES"] = "2"
	f := startFender(t, env)
	r := f.Call(t, callReq("up", "/status/503", "retries", 5))
	if c := r.Code(); c != "upstream_status" && c != "circuit_open" {
		t.Errorf("error code: got %q, want upstream_status or circuit_open (answer %s)", c, r.Raw)
	}
	wantHits(t, u, "/status/503", 2)
	wantAttempts(t, r, 2)
	wantBreaker(t, r, "open")
}
