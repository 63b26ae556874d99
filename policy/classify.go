package policy

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Class is what an attempt's outcome means for retrying and for the breaker.
type Class uint8

const (
	// Success is a 2xx or 3xx answer.
	Success Class = iota
	// Transient failures are retried and count as breaker failures: connect
	// errors, resets, EOF before the answer, per-attempt timeouts, 408, 429
	// and every 5xx.
	Transient
	// Permanent failures are neither retried nor breaker failures: every
	// other 4xx, and a request fender cannot send.
	Permanent
)

// String returns the class name.
func (c Class) String() string {
	switch c {
	case Success:
		return "success"
	case Transient:
		return "transient"
	}
	return "permanent"
}

// ClassifyStatus classifies an HTTP answer by its status code.
func ClassifyStatus(status int) Class {
	switch {
	case status >= 200 && status < 400:
		return Success
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests, status >= 500:
		return Transient
	}
	return Permanent
}

// RetryableStatus reports whether a failing status is worth a client retry,
// the `retryable` flag of an upstream_status error.
func RetryableStatus(status int) bool { return ClassifyStatus(status) == Transient }

// Backoff is the nominal wait before retry k (k = 0, 1, ...) without jitter:
// min(initial * multiplier^k, max).
func (p Policy) Backoff(k int) time.Duration {
	d := float64(p.BackoffInitial) * math.Pow(p.BackoffMultiplier, float64(k))
	if d >= float64(p.BackoffMax) || math.IsInf(d, 0) || math.IsNaN(d) {
		return p.BackoffMax
	}
	return time.Duration(d)
}

// JitteredBackoff is Backoff(k) ± Jitter of it; u is a uniform random number
// in [0, 1) (taken as an argument so tests choose it).
func (p Policy) JitteredBackoff(k int, u float64) time.Duration {
	b := p.Backoff(k)
	return b + time.Duration((2*u-1)*p.Jitter*float64(b))
}

// MinBackoff is the shortest wait before retry k: Backoff(k) less the jitter.
func (p Policy) MinBackoff(k int) time.Duration {
	b := p.Backoff(k)
	return b - time.Duration(p.Jitter*float64(b))
}

// ParseRetryAfter reads a Retry-After header value, delay-seconds or an HTTP
// date, as a wait from now. ok is false when the value is absent or invalid;
// a date in the past is a wait of zero.
func ParseRetryAfter(v string, now time.Time) (wait time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 63)
		if errors.Is(err, strconv.ErrRange) {
			return time.Duration(math.MaxInt64), true // a wait past any deadline
		}
		if err != nil {
			return 0, false
		}
		if secs > uint64(math.MaxInt64/int64(time.Second)) {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	if d := t.Sub(now); d > 0 {
		return d, true
	}
	return 0, true
}
