package policy

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"sort"
	"testing"
	"time"
)

// MustFieldError asserts that err is a *FieldError naming key.
func MustFieldError(tb testing.TB, err error, key string) *FieldError {
	tb.Helper()
	if err == nil {
		tb.Fatalf("err = nil, want a *FieldError for %q", key)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		tb.Fatalf("err = %T %v, want a *FieldError for %q", err, err, key)
	}
	if got, want := fe.Key, key; got != want {
		tb.Fatalf("FieldError.Key = %q, want %q (err %v)", got, want, err)
	}
	return fe
}

// MustParseOverrides parses raw and fails the test on error.
func MustParseOverrides(tb testing.TB, raw string) Overrides {
	tb.Helper()
	o, err := ParseOverrides([]byte(raw))
	if err != nil {
		tb.Fatalf("ParseOverrides(%s): %v", raw, err)
	}
	return o
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v, want nil", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(p *Policy)
		key    string // "" = valid
	}{
		{"timeout 0", func(p *Policy) { p.Timeout = 0 }, "timeout"},
		{"timeout negative", func(p *Policy) { p.Timeout = -time.Second }, "timeout"},
		{"timeout 1ns", func(p *Policy) { p.Timeout = 1 }, ""},
		{"deadline 0", func(p *Policy) { p.Deadline = 0 }, "deadline"},
		{"deadline negative", func(p *Policy) { p.Deadline = -1 }, "deadline"},
		{"retries negative", func(p *Policy) { p.Retries = -1 }, "retries"},
		{"retries 0", func(p *Policy) { p.Retries = 0 }, ""},
		{"backoff_initial negative", func(p *Policy) { p.BackoffInitial = -1 }, "backoff_initial"},
		{"backoff_initial 0", func(p *Policy) { p.BackoffInitial = 0 }, ""},
		{"backoff_max below initial", func(p *Policy) { p.BackoffMax = p.BackoffInitial - 1 }, "backoff_max"},
		{"backoff_max equal initial", func(p *Policy) { p.BackoffMax = p.BackoffInitial }, ""},
		{"backoff_multiplier below 1", func(p *Policy) { p.BackoffMultiplier = 0.5 }, "backoff_multiplier"},
		{"backoff_multiplier 0", func(p *Policy) { p.BackoffMultiplier = 0 }, "backoff_multiplier"},
		{"backoff_multiplier above 1000", func(p *Policy) { p.BackoffMultiplier = 1000.5 }, "backoff_multiplier"},
		{"backoff_multiplier NaN", func(p *Policy) { p.BackoffMultiplier = math.NaN() }, "backoff_multiplier"},
		{"backoff_multiplier +Inf", func(p *Policy) { p.BackoffMultiplier = math.Inf(1) }, "backoff_multiplier"},
		{"backoff_multiplier 1", func(p *Policy) { p.BackoffMultiplier = 1 }, ""},
		{"backoff_multiplier 1000", func(p *Policy) { p.BackoffMultiplier = 1000 }, ""},
		{"jitter negative", func(p *Policy) { p.Jitter = -0.01 }, "jitter"},
		{"jitter above 1", func(p *Policy) { p.Jitter = 1.01 }, "jitter"},
		{"jitter NaN", func(p *Policy) { p.Jitter = math.NaN() }, "jitter"},
		{"jitter 0", func(p *Policy) { p.Jitter = 0 }, ""},
		{"jitter 1", func(p *Policy) { p.Jitter = 1 }, ""},
		{"retry_budget negative", func(p *Policy) { p.RetryBudget = -0.1 }, "retry_budget"},
		{"retry_budget above 1", func(p *Policy) { p.RetryBudget = 1.1 }, "retry_budget"},
		{"retry_budget NaN", func(p *Policy) { p.RetryBudget = math.NaN() }, "retry_budget"},
		{"retry_budget 0", func(p *Policy) { p.RetryBudget = 0 }, ""},
		{"retry_budget 1", func(p *Policy) { p.RetryBudget = 1 }, ""},
		{"retry_budget_min negative", func(p *Policy) { p.RetryBudgetMin = -1 }, "retry_budget_min"},
		{"retry_budget_min 0", func(p *Policy) { p.RetryBudgetMin = 0 }, ""},
		{"breaker_failures 0", func(p *Policy) { p.BreakerFailures = 0 }, "breaker_failures"},
		{"breaker_failures 1", func(p *Policy) { p.BreakerFailures = 1 }, ""},
		{"breaker_successes 0", func(p *Policy) { p.BreakerSuccesses = 0 }, "breaker_successes"},
		{"breaker_successes 1", func(p *Policy) { p.BreakerSuccesses = 1 }, ""},
		{"breaker_cooldown 0", func(p *Policy) { p.BreakerCooldown = 0 }, "breaker_cooldown"},
		{"breaker_cooldown negative", func(p *Policy) { p.BreakerCooldown = -time.Second }, "breaker_cooldown"},
		{"breaker_half_open_max 0", func(p *Policy) { p.BreakerHalfOpenMax = 0 }, "breaker_half_open_max"},
		{"breaker_half_open_max 1", func(p *Policy) { p.BreakerHalfOpenMax = 1 }, ""},
		{"cache_ttl negative", func(p *Policy) { p.CacheTTL = -1 }, "cache_ttl"},
		{"cache_ttl 0", func(p *Policy) { p.CacheTTL = 0 }, ""},
		{"cache_stale negative", func(p *Policy) { p.CacheStale = -1 }, "cache_stale"},
		{"cache_stale 0", func(p *Policy) { p.CacheStale = 0 }, ""},
		{"cache_vary_headers empty name", func(p *Policy) { p.CacheVaryHeaders = []string{""} }, "cache_vary_headers"},
		{"cache_vary_headers with space", func(p *Policy) { p.CacheVaryHeaders = []string{"X A"} }, "cache_vary_headers"},
		{"cache_vary_headers with colon", func(p *Policy) { p.CacheVaryHeaders = []string{"X-A:"} }, "cache_vary_headers"},
		{"cache_vary_headers with CRLF", func(p *Policy) { p.CacheVaryHeaders = []string{"X-A\r\n"} }, "cache_vary_headers"},
		{"cache_vary_headers valid", func(p *Policy) { p.CacheVaryHeaders = []string{"Authorization", "X-Tenant"} }, ""},
		{"fallback empty", func(p *Policy) { p.Fallback = []string{""} }, "fallback"},
		{"fallback empty upstream", func(p *Policy) { p.Fallback = []string{":phi3"} }, "fallback"},
		{"fallback valid", func(p *Policy) { p.Fallback = []string{"small", "big:phi3"} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Default()
			tt.mutate(&p)
			err := p.Validate()
			if tt.key == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			fe := MustFieldError(t, err, tt.key)
			if fe.Err == nil {
				t.Errorf("FieldError.Err = nil, want a reason")
			}
		})
	}
}

func TestParseOverridesValues(t *testing.T) {
	tests := []struct {
		name  string
		raw   string
		check func(t *testing.T, o Overrides)
	}{
		{"empty object", `{}`, func(t *testing.T, o Overrides) {
			if got, want := o, (Overrides{}); !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v, want no override set", got)
			}
		}},
		{"duration string", `{"timeout":"250ms"}`, func(t *testing.T, o Overrides) {
			mustDuration(t, o.Timeout, 250*time.Millisecond)
		}},
		{"duration string seconds", `{"deadline":"30s"}`, func(t *testing.T, o Overrides) {
			mustDuration(t, o.Deadline, 30*time.Second)
		}},
		{"duration milliseconds integer", `{"breaker_cooldown":250}`, func(t *testing.T, o Overrides) {
			mustDuration(t, o.BreakerCooldown, 250*time.Millisecond)
		}},
		{"duration milliseconds fraction", `{"backoff_initial":1.5}`, func(t *testing.T, o Overrides) {
			mustDuration(t, o.BackoffInitial, 1500*time.Microsecond)
		}},
		{"duration zero", `{"cache_ttl":0}`, func(t *testing.T, o Overrides) {
			mustDuration(t, o.CacheTTL, 0)
		}},
		{"int", `{"retries":2}`, func(t *testing.T, o Overrides) {
			if o.Retries == nil || *o.Retries != 2 {
				t.Errorf("Retries = %v, want 2", o.Retries)
			}
		}},
		{"float", `{"jitter":0.5}`, func(t *testing.T, o Overrides) {
			if o.Jitter == nil || *o.Jitter != 0.5 {
				t.Errorf("Jitter = %v, want 0.5", o.Jitter)
			}
		}},
		{"lists and string", `{"fallback":["small","big:phi3"],"cache_vary_headers":["X-Tenant"],"stream_end":"[DONE]"}`, func(t *testing.T, o Overrides) {
			if o.Fallback == nil || !reflect.DeepEqual(*o.Fallback, []string{"small", "big:phi3"}) {
				t.Errorf("Fallback = %v, want [small big:phi3]", o.Fallback)
			}
			if o.CacheVaryHeaders == nil || !reflect.DeepEqual(*o.CacheVaryHeaders, []string{"X-Tenant"}) {
				t.Errorf("CacheVaryHeaders = %v, want [X-Tenant]", o.CacheVaryHeaders)
			}
			if o.StreamEnd == nil || *o.StreamEnd != "[DONE]" {
				t.Errorf("StreamEnd = %v, want [DONE]", o.StreamEnd)
			}
			if o.Retries != nil || o.Timeout != nil {
				t.Errorf("absent keys set: Retries %v, Timeout %v", o.Retries, o.Timeout)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, MustParseOverrides(t, tt.raw))
		})
	}
}

func mustDuration(tb testing.TB, got *Duration, want time.Duration) {
	tb.Helper()
	if got == nil {
		tb.Fatalf("duration = nil, want %s", want)
	}
	if time.Duration(*got) != want {
		tb.Errorf("duration = %s, want %s", time.Duration(*got), want)
	}
}

func TestParseOverridesErrors(t *testing.T) {
	tests := []struct {
		name     string
		raw      string
		key      string // "" = not a FieldError
		unknown  bool   // wraps ErrUnknownKey
		duration bool   // wraps a *DurationError
	}{
		{name: "not an object: array", raw: `[]`},
		{name: "not an object: null", raw: `null`},
		{name: "not an object: number", raw: `5`},
		{name: "not JSON", raw: `{"retries":`},
		{name: "unknown key", raw: `{"retriez":3}`, key: "retriez", unknown: true},
		{name: "unknown key upper case", raw: `{"Retries":3}`, key: "Retries", unknown: true},
		{name: "unknown key among known", raw: `{"retries":3,"zzz":1}`, key: "zzz", unknown: true},
		{name: "int as string", raw: `{"retries":"3"}`, key: "retries"},
		{name: "int as fraction", raw: `{"retries":1.5}`, key: "retries"},
		{name: "int as bool", raw: `{"breaker_failures":true}`, key: "breaker_failures"},
		{name: "float as string", raw: `{"jitter":"0.5"}`, key: "jitter"},
		{name: "list as string", raw: `{"fallback":"small"}`, key: "fallback"},
		{name: "list of numbers", raw: `{"cache_vary_headers":[1]}`, key: "cache_vary_headers"},
		{name: "string as number", raw: `{"stream_end":5}`, key: "stream_end"},
		{name: "duration as bool", raw: `{"timeout":true}`, key: "timeout", duration: true},
		{name: "duration as object", raw: `{"timeout":{}}`, key: "timeout", duration: true},
		{name: "null int", raw: `{"retries":null}`, key: "retries"},
		{name: "null duration", raw: `{"timeout":null}`, key: "timeout"},
		{name: "null list", raw: `{"fallback":null}`, key: "fallback"},
		{name: "null string", raw: `{"stream_end":null}`, key: "stream_end"},
		{name: "duration not Go syntax", raw: `{"timeout":"abc"}`, key: "timeout", duration: true},
		{name: "duration string without unit", raw: `{"deadline":"10"}`, key: "deadline", duration: true},
		{name: "duration empty string", raw: `{"cache_ttl":""}`, key: "cache_ttl", duration: true},
		{name: "duration milliseconds overflow", raw: `{"cache_stale":1e30}`, key: "cache_stale", duration: true},
		{name: "duration milliseconds beyond float", raw: `{"breaker_cooldown":1e400}`, key: "breaker_cooldown", duration: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseOverrides([]byte(tt.raw))
			if err == nil {
				t.Fatalf("ParseOverrides(%s) = nil error, want an error", tt.raw)
			}
			if tt.key == "" {
				return
			}
			MustFieldError(t, err, tt.key)
			if got, want := errors.Is(err, ErrUnknownKey), tt.unknown; got != want {
				t.Errorf("errors.Is(err, ErrUnknownKey) = %v, want %v (err %v)", got, want, err)
			}
			var de *DurationError
			if got, want := errors.As(err, &de), tt.duration; got != want {
				t.Errorf("errors.As(err, *DurationError) = %v, want %v (err %v)", got, want, err)
			}
		})
	}
}

func TestApply(t *testing.T) {
	base := Default()
	base.Fallback = []string{"old"}

	t.Run("empty overrides keep base", func(t *testing.T) {
		got, err := MustParseOverrides(t, `{}`).Apply(base)
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if !reflect.DeepEqual(got, base) {
			t.Errorf("got %+v, want %+v", got, base)
		}
	})

	t.Run("only present keys change", func(t *testing.T) {
		o := MustParseOverrides(t, `{"retries":1,"timeout":"2s","jitter":0,"fallback":["small"],"stream_end":"[DONE]"}`)
		got, err := o.Apply(base)
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		want := base
		want.Retries = 1
		want.Timeout = 2 * time.Second
		want.Jitter = 0
		want.Fallback = []string{"small"}
		want.StreamEnd = "[DONE]"
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
		if got, want := base.Fallback, []string{"old"}; !reflect.DeepEqual(got, want) {
			t.Errorf("base.Fallback = %v after Apply, want %v", got, want)
		}
	})

	t.Run("every key", func(t *testing.T) {
		o := MustParseOverrides(t, `{"timeout":"1s","deadline":"5s","retries":7,
			"backoff_initial":"10ms","backoff_max":"90ms","backoff_multiplier":3,"jitter":0.1,
			"retry_budget":0.5,"retry_budget_min":1,"breaker_failures":9,"breaker_successes":4,
			"breaker_cooldown":"3s","breaker_half_open_max":2,"cache_ttl":"1m","cache_stale":"2m",
			"cache_vary_headers":["X-Tenant"],"fallback":["a","b:m"],"stream_end":"\"done\":true"}`)
		got, err := o.Apply(Default())
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		want := Policy{
			Timeout: time.Second, Deadline: 5 * time.Second, Retries: 7,
			BackoffInitial: 10 * time.Millisecond, BackoffMax: 90 * time.Millisecond, BackoffMultiplier: 3,
			Jitter: 0.1, RetryBudget: 0.5, RetryBudgetMin: 1, BreakerFailures: 9, BreakerSuccesses: 4,
			BreakerCooldown: 3 * time.Second, BreakerHalfOpenMax: 2, CacheTTL: time.Minute, CacheStale: 2 * time.Minute,
			CacheVaryHeaders: []string{"X-Tenant"}, Fallback: []string{"a", "b:m"}, StreamEnd: `"done":true`,
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})

	invalid := []struct {
		name, raw, key string
	}{
		{"jitter out of range", `{"jitter":2}`, "jitter"},
		{"negative duration in milliseconds", `{"timeout":-5}`, "timeout"},
		{"negative duration string", `{"cache_ttl":"-1s"}`, "cache_ttl"},
		{"backoff_max below base backoff_initial", `{"backoff_max":"10ms"}`, "backoff_max"},
		{"breaker_failures 0", `{"breaker_failures":0}`, "breaker_failures"},
		{"bad fallback entry", `{"fallback":[":m"]}`, "fallback"},
	}
	for _, tt := range invalid {
		t.Run("invalid/"+tt.name, func(t *testing.T) {
			_, err := MustParseOverrides(t, tt.raw).Apply(Default())
			MustFieldError(t, err, tt.key)
		})
	}
}

func TestMarshalJSON(t *testing.T) {
	b, err := json.Marshal(Default())
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("Unmarshal %s: %v", b, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	wantKeys := []string{
		"backoff_initial", "backoff_max", "backoff_multiplier", "breaker_cooldown",
		"breaker_failures", "breaker_half_open_max", "breaker_successes", "cache_stale",
		"cache_ttl", "cache_vary_headers", "deadline", "fallback", "jitter", "retries",
		"retry_budget", "retry_budget_min", "stream_end", "timeout",
	}
	if !reflect.DeepEqual(keys, wantKeys) {
		t.Errorf("keys = %v, want %v", keys, wantKeys)
	}
	values := map[string]any{
		"timeout": "10s", "deadline": "30s", "retries": 3.0, "backoff_initial": "50ms",
		"backoff_max": "500ms", "backoff_multiplier": 2.0, "jitter": 0.25, "retry_budget": 0.2,
		"retry_budget_min": 3.0, "breaker_failures": 5.0, "breaker_successes": 2.0,
		"breaker_cooldown": "30s", "breaker_half_open_max": 1.0, "cache_ttl": "5m0s",
		"cache_stale": "1h0m0s", "cache_vary_headers": []any{}, "fallback": []any{}, "stream_end": "",
	}
	for k, want := range values {
		if got := m[k]; !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", k, got, want)
		}
	}

	t.Run("round trip through ParseOverrides", func(t *testing.T) {
		p := Default()
		p.Fallback = []string{"small"}
		p.BackoffInitial = 1500 * time.Microsecond
		raw, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		got, err := MustParseOverrides(t, string(raw)).Apply(Policy{})
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("got %+v, want %+v", got, p)
		}
	})
}
