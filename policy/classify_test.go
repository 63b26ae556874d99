package policy

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

func TestClassifyStatus(t *testing.T) {
	tests := []struct {
		status int
		want   Class
	}{
		{200, Success},
		{204, Success},
		{301, Success},
		{302, Success},
		{304, Success},
		{399, Success},
		{400, Permanent},
		{401, Permanent},
		{403, Permanent},
		{404, Permanent},
		{408, Transient},
		{409, Permanent},
		{422, Permanent},
		{429, Transient},
		{499, Permanent},
		{500, Transient},
		{502, Transient},
		{503, Transient},
		{504, Transient},
		{599, Transient},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			if got, want := ClassifyStatus(tt.status), tt.want; got != want {
				t.Errorf("ClassifyStatus(%d) = %s, want %s", tt.status, got, want)
			}
			if got, want := RetryableStatus(tt.status), tt.want == Transient; got != want {
				t.Errorf("RetryableStatus(%d) = %v, want %v", tt.status, got, want)
			}
		})
	}
}

func TestClassString(t *testing.T) {
	for c, want := range map[Class]string{Success: "success", Transient: "transient", Permanent: "permanent"} {
		if got := c.String(); got != want {
			t.Errorf("Class(%d).String() = %q, want %q", c, got, want)
		}
	}
}

func TestBackoff(t *testing.T) {
	ms := time.Millisecond
	custom := Default()
	custom.BackoffInitial = 10 * ms
	custom.BackoffMultiplier = 3
	custom.BackoffMax = 100 * ms
	fractional := Default()
	fractional.BackoffInitial = 100 * ms
	fractional.BackoffMultiplier = 1.5
	fractional.BackoffMax = 300 * ms

	tests := []struct {
		name string
		p    Policy
		want []time.Duration // for k = 0, 1, ...
	}{
		{"defaults", Default(), []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 500 * ms, 500 * ms}},
		{"multiplier 3 cap 100ms", custom, []time.Duration{10 * ms, 30 * ms, 90 * ms, 100 * ms, 100 * ms}},
		{"multiplier 1.5 cap 300ms", fractional, []time.Duration{100 * ms, 150 * ms, 225 * ms, 300 * ms, 300 * ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, want := range tt.want {
				if got := tt.p.Backoff(k); got != want {
					t.Errorf("Backoff(%d) = %s, want %s", k, got, want)
				}
			}
		})
	}

	t.Run("huge k stays at the cap", func(t *testing.T) {
		for _, k := range []int{64, 1000, 1 << 30} {
			if got, want := Default().Backoff(k), 500*ms; got != want {
				t.Errorf("Backoff(%d) = %s, want %s", k, got, want)
			}
		}
	})
}

func TestJitteredBackoff(t *testing.T) {
	p := Default() // jitter 0.25
	tests := []struct {
		name   string
		k      int
		u      float64
		lo, hi time.Duration
	}{
		{"u=0 is -25%", 0, 0, 37500 * time.Microsecond, 37500 * time.Microsecond},
		{"u=0.5 is nominal", 0, 0.5, 50 * time.Millisecond, 50 * time.Millisecond},
		{"u=0.999 is about +25%", 0, 0.999, 62400 * time.Microsecond, 62500 * time.Microsecond},
		{"k=2 u=0 is -25%", 2, 0, 150 * time.Millisecond, 150 * time.Millisecond},
		{"k=2 u=0.999 is about +25%", 2, 0.999, 249 * time.Millisecond, 250 * time.Millisecond},
		{"capped k=9 u=0", 9, 0, 375 * time.Millisecond, 375 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := p.JitteredBackoff(tt.k, tt.u)
			if got < tt.lo || got > tt.hi {
				t.Errorf("JitteredBackoff(%d, %v) = %s, want in [%s, %s]", tt.k, tt.u, got, tt.lo, tt.hi)
			}
		})
	}

	t.Run("jitter 0 is the nominal backoff", func(t *testing.T) {
		q := Default()
		q.Jitter = 0
		for _, u := range []float64{0, 0.3, 0.999} {
			if got, want := q.JitteredBackoff(1, u), q.Backoff(1); got != want {
				t.Errorf("JitteredBackoff(1, %v) = %s, want %s", u, got, want)
			}
		}
	})
}

func TestMinBackoff(t *testing.T) {
	ms := time.Millisecond
	p := Default()
	for k, want := range []time.Duration{37500 * time.Microsecond, 75 * ms, 150 * ms, 300 * ms, 375 * ms, 375 * ms} {
		if got := p.MinBackoff(k); got != want {
			t.Errorf("MinBackoff(%d) = %s, want %s", k, got, want)
		}
		if got, want := p.MinBackoff(k), p.JitteredBackoff(k, 0); got != want {
			t.Errorf("MinBackoff(%d) = %s, want JitteredBackoff(%d, 0) = %s", k, got, k, want)
		}
	}
	p.Jitter = 0
	if got, want := p.MinBackoff(1), 100*ms; got != want {
		t.Errorf("MinBackoff(1) with jitter 0 = %s, want %s", got, want)
	}
}

// TestJitteredBackoffBounds checks, over many random u, jitters and policies,
// that every jittered wait lies in [b*(1-j), b*(1+j)] and never under MinBackoff.
func TestJitteredBackoffBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		p := Default()
		p.Jitter = rng.Float64()
		p.BackoffInitial = time.Duration(rng.Int64N(int64(time.Second)))
		p.BackoffMultiplier = 1 + rng.Float64()*4
		p.BackoffMax = p.BackoffInitial + time.Duration(rng.Int64N(int64(10*time.Second)))
		k := rng.IntN(12)
		u := rng.Float64()

		b := p.Backoff(k)
		d := time.Duration(p.Jitter * float64(b))
		lo, hi := b-d, b+d
		got := p.JitteredBackoff(k, u)
		if got < lo || got > hi {
			t.Fatalf("policy %+v: JitteredBackoff(%d, %v) = %s, want in [%s, %s]", p, k, u, got, lo, hi)
		}
		if min := p.MinBackoff(k); got < min {
			t.Fatalf("policy %+v: JitteredBackoff(%d, %v) = %s, below MinBackoff %s", p, k, u, got, min)
		}
		if b > p.BackoffMax {
			t.Fatalf("policy %+v: Backoff(%d) = %s, over BackoffMax", p, k, b)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, time.January, 2, 3, 4, 5, 0, time.UTC) // a Thursday
	tests := []struct {
		name    string
		v       string
		wait    time.Duration
		ok      bool
		atLeast bool // wait is a lower bound, not exact
	}{
		{name: "zero", v: "0", wait: 0, ok: true},
		{name: "seconds", v: "5", wait: 5 * time.Second, ok: true},
		{name: "spaces around", v: " 7 ", wait: 7 * time.Second, ok: true},
		{name: "negative", v: "-1", ok: false},
		{name: "letters", v: "abc", ok: false},
		{name: "fraction", v: "1.5", ok: false},
		{name: "empty", v: "", ok: false},
		{name: "only spaces", v: "   ", ok: false},
		{name: "IMF-fixdate in the future", v: now.Add(90 * time.Second).Format("Mon, 02 Jan 2006 15:04:05 GMT"), wait: 90 * time.Second, ok: true},
		{name: "IMF-fixdate in the past", v: now.Add(-time.Hour).Format("Mon, 02 Jan 2006 15:04:05 GMT"), wait: 0, ok: true},
		{name: "IMF-fixdate now", v: "Thu, 02 Jan 2025 03:04:05 GMT", wait: 0, ok: true},
		{name: "RFC 850 date", v: "Thursday, 02-Jan-25 03:05:35 GMT", wait: 90 * time.Second, ok: true},
		{name: "asctime date", v: "Thu Jan  2 03:06:05 2025", wait: 2 * time.Minute, ok: true},
		{name: "invalid date", v: "Thu, 32 Jan 2025 03:04:05 GMT", ok: false},
		{name: "huge seconds past Duration", v: "10000000000", ok: true, atLeast: true, wait: 24 * 365 * time.Hour},
		{name: "huge seconds past uint64", v: "99999999999999999999999", ok: true, atLeast: true, wait: 24 * 365 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wait, ok := ParseRetryAfter(tt.v, now)
			if ok != tt.ok {
				t.Fatalf("ParseRetryAfter(%q) ok = %v, want %v (wait %s)", tt.v, ok, tt.ok, wait)
			}
			switch {
			case !ok:
			case tt.atLeast:
				if wait < tt.wait {
					t.Errorf("ParseRetryAfter(%q) = %s, want positive and at least %s", tt.v, wait, tt.wait)
				}
			default:
				if wait != tt.wait {
					t.Errorf("ParseRetryAfter(%q) = %s, want %s", tt.v, wait, tt.wait)
				}
			}
		})
	}
}
