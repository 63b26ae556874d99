package e2e

import (
	"encoding/json"
	"testing"
	"time"
)

// slack is added to every upper time bound: the suite runs on small shared
// machines. Lower bounds are firm.
const slack = 750 * time.Millisecond

// wantOK fails the test unless r is a success.
func wantOK(t testing.TB, r Resp) {
	t.Helper()
	if !r.OK || r.Error != nil {
		t.Fatalf("got %s, want ok:true", r.Raw)
	}
}

// wantError checks ok:false with the given error code and retryable flag.
func wantError(t testing.TB, r Resp, code string, retryable bool) {
	t.Helper()
	if r.OK || r.Error == nil {
		t.Fatalf("got %s, want ok:false with error %q", r.Raw, code)
	}
	if r.Error.Code != code {
		t.Fatalf("error code: got %q, want %q (answer %s)", r.Error.Code, code, r.Raw)
	}
	if r.Error.Retryable != retryable {
		t.Errorf("error retryable: got %v, want %v (answer %s)", r.Error.Retryable, retryable, r.Raw)
	}
}

// wantStatus checks the status field of a call answer.
func wantStatus(t testing.TB, r Resp, status int) {
	t.Helper()
	if got := r.StatusCode(); got != status {
		t.Errorf("status: got %d, want %d (answer %s)", got, status, r.Raw)
	}
}

// wantAttempts checks meta.attempts.
func wantAttempts(t testing.TB, r Resp, n int) {
	t.Helper()
	if got := r.Attempts(); got != n {
		t.Errorf("meta.attempts: got %d, want %d (answer %s)", got, n, r.Raw)
	}
}

// wantBreaker checks meta.breaker.
func wantBreaker(t testing.TB, r Resp, state string) {
	t.Helper()
	if got := r.Breaker(); got != state {
		t.Errorf("meta.breaker: got %q, want %q (answer %s)", got, state, r.Raw)
	}
}

// wantHits checks how many requests the upstream saw on path.
func wantHits(t testing.TB, u *Upstream, path string, n int) {
	t.Helper()
	if got := u.Hits(path); got != n {
		t.Errorf("upstream requests to %s: got %d, want %d", path, got, n)
	}
}

// wantBetween checks lo <= d <= hi.
func wantBetween(t testing.TB, what string, d, lo, hi time.Duration) {
	t.Helper()
	if d < lo || d > hi {
		t.Errorf("%s: got %v, want between %v and %v", what, d.Round(time.Millisecond), lo, hi)
	}
}

// decodeEcho reads the body of an answer from the upstream's echo route.
func decodeEcho(t testing.TB, r Resp) Echo {
	t.Helper()
	var e Echo
	if len(r.Body) == 0 || r.Body[0] != '{' {
		t.Fatalf("body: got %s, want the upstream's JSON object (answer %s)", r.Body, r.Raw)
	}
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("body: %v (answer %s)", err, r.Raw)
	}
	return e
}

// jsonEqual reports whether a and b are the same JSON value.
func jsonEqual(t testing.TB, a, b string) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal([]byte(a), &va); err != nil {
		return false
	}
	if err := json.Unmarshal([]byte(b), &vb); err != nil {
		t.Fatalf("bad JSON %q: %v", b, err)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return string(ja) == string(jb)
}

// timed measures how long fn takes.
func timed(fn func()) time.Duration {
	start := time.Now()
	fn()
	return time.Since(start)
}
