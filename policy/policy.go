// Package policy holds fender's resilience decisions: the per-upstream Policy
// (timeouts, retries, backoff, breaker and cache settings), the classification
// of attempt outcomes into success, transient and permanent, the backoff
// schedule, Retry-After parsing, the retry budget and the circuit breakers.
//
// policy is a leaf: it knows no socket and no cache. Where it must report (a
// breaker transition), it calls a hook handed to it by the layer above.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Policy is the effective resilience policy of one upstream. A Policy is a
// value: copy it freely; it is never mutated once validated and published.
type Policy struct {
	Timeout            time.Duration // per attempt
	Deadline           time.Duration // per request, all attempts and backoff
	Retries            int           // most retries after the first attempt
	BackoffInitial     time.Duration
	BackoffMax         time.Duration
	BackoffMultiplier  float64
	Jitter             float64 // 0..1, ± fraction of each backoff
	RetryBudget        float64 // 0..1 of the upstream's requests in flight
	RetryBudgetMin     int     // retries always allowed in flight
	BreakerFailures    int
	BreakerSuccesses   int
	BreakerCooldown    time.Duration
	BreakerHalfOpenMax int
	CacheTTL           time.Duration
	CacheStale         time.Duration
	CacheVaryHeaders   []string
	Fallback           []string // "UPSTREAM" or "UPSTREAM:MODEL"
	StreamEnd          string
}

// Default returns the seed design's policy, the defaults of SPEC section 7.
func Default() Policy {
	return Policy{
		Timeout:            10 * time.Second,
		Deadline:           30 * time.Second,
		Retries:            3,
		BackoffInitial:     50 * time.Millisecond,
		BackoffMax:         500 * time.Millisecond,
		BackoffMultiplier:  2,
		Jitter:             0.25,
		RetryBudget:        0.2,
		RetryBudgetMin:     3,
		BreakerFailures:    5,
		BreakerSuccesses:   2,
		BreakerCooldown:    30 * time.Second,
		BreakerHalfOpenMax: 1,
		CacheTTL:           5 * time.Minute,
		CacheStale:         time.Hour,
	}
}

// FieldError is a validation error that names the policy key at fault.
type FieldError struct {
	Key string
	Err error
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Validate checks every field's range. The error is a *FieldError naming the
// first offending key.
func (p Policy) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &FieldError{Key: key, Err: fmt.Errorf(format, args...)}
	}
	switch {
	case p.Timeout <= 0:
		return bad("timeout", "must be > 0, got %s", p.Timeout)
	case p.Deadline <= 0:
		return bad("deadline", "must be > 0, got %s", p.Deadline)
	case p.Retries < 0:
		return bad("retries", "must be >= 0, got %d", p.Retries)
	case p.BackoffInitial < 0:
		return bad("backoff_initial", "must be >= 0, got %s", p.BackoffInitial)
	case p.BackoffMax < p.BackoffInitial:
		return bad("backoff_max", "must be >= backoff_initial (%s), got %s", p.BackoffInitial, p.BackoffMax)
	case math.IsNaN(p.BackoffMultiplier) || p.BackoffMultiplier < 1 || p.BackoffMultiplier > 1000:
		return bad("backoff_multiplier", "must be in 1..1000, got %v", p.BackoffMultiplier)
	case math.IsNaN(p.Jitter) || p.Jitter < 0 || p.Jitter > 1:
		return bad("jitter", "must be in 0..1, got %v", p.Jitter)
	case math.IsNaN(p.RetryBudget) || p.RetryBudget < 0 || p.RetryBudget > 1:
		return bad("retry_budget", "must be in 0..1, got %v", p.RetryBudget)
	case p.RetryBudgetMin < 0:
		return bad("retry_budget_min", "must be >= 0, got %d", p.RetryBudgetMin)
	case p.BreakerFailures < 1:
		return bad("breaker_failures", "must be >= 1, got %d", p.BreakerFailures)
	case p.BreakerSuccesses < 1:
		return bad("breaker_successes", "must be >= 1, got %d", p.BreakerSuccesses)
	case p.BreakerCooldown <= 0:
		return bad("breaker_cooldown", "must be > 0, got %s", p.BreakerCooldown)
	case p.BreakerHalfOpenMax < 1:
		return bad("breaker_half_open_max", "must be >= 1, got %d", p.BreakerHalfOpenMax)
	case p.CacheTTL < 0:
		return bad("cache_ttl", "must be >= 0, got %s", p.CacheTTL)
	case p.CacheStale < 0:
		return bad("cache_stale", "must be >= 0, got %s", p.CacheStale)
	}
	for _, h := range p.CacheVaryHeaders {
		if h == "" || strings.ContainsAny(h, " \t\r\n:") {
			return bad("cache_vary_headers", "invalid header name %q", h)
		}
	}
	for _, f := range p.Fallback {
		up, _, _ := strings.Cut(f, ":")
		if up == "" {
			return bad("fallback", "invalid entry %q, want UPSTREAM or UPSTREAM:MODEL", f)
		}
	}
	return nil
}

// Overrides is a partial policy as written in FENDER_POLICIES or a configure
// op: only the keys present change the base policy.
type Overrides struct {
	Timeout            *Duration `json:"timeout"`
	Deadline           *Duration `json:"deadline"`
	Retries            *int      `json:"retries"`
	BackoffInitial     *Duration `json:"backoff_initial"`
	BackoffMax         *Duration `json:"backoff_max"`
	BackoffMultiplier  *float64  `json:"backoff_multiplier"`
	Jitter             *float64  `json:"jitter"`
	RetryBudget        *float64  `json:"retry_budget"`
	RetryBudgetMin     *int      `json:"retry_budget_min"`
	BreakerFailures    *int      `json:"breaker_failures"`
	BreakerSuccesses   *int      `json:"breaker_successes"`
	BreakerCooldown    *Duration `json:"breaker_cooldown"`
	BreakerHalfOpenMax *int      `json:"breaker_half_open_max"`
	CacheTTL           *Duration `json:"cache_ttl"`
	CacheStale         *Duration `json:"cache_stale"`
	CacheVaryHeaders   *[]string `json:"cache_vary_headers"`
	Fallback           *[]string `json:"fallback"`
	StreamEnd          *string   `json:"stream_end"`
}

// ErrUnknownKey is returned by ParseOverrides for a key that is not a policy key.
var ErrUnknownKey = errors.New("unknown policy key")

// ParseOverrides decodes one upstream's overrides from a JSON object. Unknown
// keys and values of the wrong type are *FieldError values naming the key.
func ParseOverrides(raw []byte) (Overrides, error) {
	var o Overrides
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return o, errors.New("policy must be a JSON object")
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		target := o.field(k)
		if target == nil {
			return o, &FieldError{Key: k, Err: ErrUnknownKey}
		}
		v := fields[k]
		if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			return o, &FieldError{Key: k, Err: errors.New("must not be null")}
		}
		if err := json.Unmarshal(v, target); err != nil {
			var de *DurationError
			if errors.As(err, &de) {
				return o, &FieldError{Key: k, Err: de}
			}
			return o, &FieldError{Key: k, Err: fmt.Errorf("wrong type or value %s", v)}
		}
	}
	return o, nil
}

// field returns a pointer to the override field of key k, or nil.
func (o *Overrides) field(k string) any {
	switch k {
	case "timeout":
		return &o.Timeout
	case "deadline":
		return &o.Deadline
	case "retries":
		return &o.Retries
	case "backoff_initial":
		return &o.BackoffInitial
	case "backoff_max":
		return &o.BackoffMax
	case "backoff_multiplier":
		return &o.BackoffMultiplier
	case "jitter":
		return &o.Jitter
	case "retry_budget":
		return &o.RetryBudget
	case "retry_budget_min":
		return &o.RetryBudgetMin
	case "breaker_failures":
		return &o.BreakerFailures
	case "breaker_successes":
		return &o.BreakerSuccesses
	case "breaker_cooldown":
		return &o.BreakerCooldown
	case "breaker_half_open_max":
		return &o.BreakerHalfOpenMax
	case "cache_ttl":
		return &o.CacheTTL
	case "cache_stale":
		return &o.CacheStale
	case "cache_vary_headers":
		return &o.CacheVaryHeaders
	case "fallback":
		return &o.Fallback
	case "stream_end":
		return &o.StreamEnd
	}
	return nil
}

// Apply returns base with the overrides applied, validated whole.
func (o Overrides) Apply(base Policy) (Policy, error) {
	p := base
	setD := func(dst *time.Duration, src *Duration) {
		if src != nil {
			*dst = time.Duration(*src)
		}
	}
	setI := func(dst *int, src *int) {
		if src != nil {
			*dst = *src
		}
	}
	setF := func(dst *float64, src *float64) {
		if src != nil {
			*dst = *src
		}
	}
	setD(&p.Timeout, o.Timeout)
	setD(&p.Deadline, o.Deadline)
	setI(&p.Retries, o.Retries)
	setD(&p.BackoffInitial, o.BackoffInitial)
	setD(&p.BackoffMax, o.BackoffMax)
	setF(&p.BackoffMultiplier, o.BackoffMultiplier)
	setF(&p.Jitter, o.Jitter)
	setF(&p.RetryBudget, o.RetryBudget)
	setI(&p.RetryBudgetMin, o.RetryBudgetMin)
	setI(&p.BreakerFailures, o.BreakerFailures)
	setI(&p.BreakerSuccesses, o.BreakerSuccesses)
	setD(&p.BreakerCooldown, o.BreakerCooldown)
	setI(&p.BreakerHalfOpenMax, o.BreakerHalfOpenMax)
	setD(&p.CacheTTL, o.CacheTTL)
	setD(&p.CacheStale, o.CacheStale)
	if o.CacheVaryHeaders != nil {
		p.CacheVaryHeaders = append([]string(nil), (*o.CacheVaryHeaders)...)
	}
	if o.Fallback != nil {
		p.Fallback = append([]string(nil), (*o.Fallback)...)
	}
	if o.StreamEnd != nil {
		p.StreamEnd = *o.StreamEnd
	}
	return p, p.Validate()
}

// MarshalJSON writes the policy with the SPEC's keys, durations in Go syntax.
func (p Policy) MarshalJSON() ([]byte, error) {
	vary, fallback := p.CacheVaryHeaders, p.Fallback
	if vary == nil {
		vary = []string{}
	}
	if fallback == nil {
		fallback = []string{}
	}
	return json.Marshal(struct {
		Timeout            string   `json:"timeout"`
		Deadline           string   `json:"deadline"`
		Retries            int      `json:"retries"`
		BackoffInitial     string   `json:"backoff_initial"`
		BackoffMax         string   `json:"backoff_max"`
		BackoffMultiplier  float64  `json:"backoff_multiplier"`
		Jitter             float64  `json:"jitter"`
		RetryBudget        float64  `json:"retry_budget"`
		RetryBudgetMin     int      `json:"retry_budget_min"`
		BreakerFailures    int      `json:"breaker_failures"`
		BreakerSuccesses   int      `json:"breaker_successes"`
		BreakerCooldown    string   `json:"breaker_cooldown"`
		BreakerHalfOpenMax int      `json:"breaker_half_open_max"`
		CacheTTL           string   `json:"cache_ttl"`
		CacheStale         string   `json:"cache_stale"`
		CacheVaryHeaders   []string `json:"cache_vary_headers"`
		Fallback           []string `json:"fallback"`
		StreamEnd          string   `json:"stream_end"`
	}{
		p.Timeout.String(), p.Deadline.String(), p.Retries, p.BackoffInitial.String(),
		p.BackoffMax.String(), p.BackoffMultiplier, p.Jitter, p.RetryBudget, p.RetryBudgetMin,
		p.BreakerFailures, p.BreakerSuccesses, p.BreakerCooldown.String(), p.BreakerHalfOpenMax,
		p.CacheTTL.String(), p.CacheStale.String(), vary, fallback, p.StreamEnd,
	})
}

// Duration is a time.Duration that decodes from JSON as a Go duration string
// ("250ms", "30s") or as a number of milliseconds.
type Duration time.Duration

// DurationError is a duration that could not be parsed.
type DurationError struct{ Value string }

func (e *DurationError) Error() string {
	return fmt.Sprintf("invalid duration %s: want a Go duration like \"250ms\" or milliseconds", e.Value)
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return &DurationError{Value: string(b)}
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return &DurationError{Value: string(b)}
		}
		*d = Duration(v)
		return nil
	}
	ms, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(ms) || math.IsInf(ms, 0) || math.Abs(ms) > float64(math.MaxInt64/int64(time.Millisecond)) {
		return &DurationError{Value: string(b)}
	}
	*d = Duration(time.Duration(ms * float64(time.Millisecond)))
	return nil
}
