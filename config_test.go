package main

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigDefaults(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "FENDER_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	c, err := LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"socket", c.Socket, "/tmp/fender.sock"},
		{"socket mode", os.FileMode(c.SocketMode), os.FileMode(0o660)},
		{"upstreams", len(c.Upstreams), 1},
		{"upstream", c.Upstreams[0], upstreamDef{"ollama", "http://127.0.0.1:11434"}},
		{"admin uids", []uint32(c.AdminUIDs)[0], uint32(os.Getuid())},
		{"timeout", c.Base.Timeout, 10 * time.Second},
		{"deadline", c.Base.Deadline, 30 * time.Second},
		{"retries", c.Base.Retries, 3},
		{"backoff", c.Base.BackoffInitial, 50 * time.Millisecond},
		{"backoff max", c.Base.BackoffMax, 500 * time.Millisecond},
		{"jitter", c.Base.Jitter, 0.25},
		{"retry budget", c.Base.RetryBudget, 0.2},
		{"breaker failures", c.Base.BreakerFailures, 5},
		{"breaker cooldown", c.Base.BreakerCooldown, 30 * time.Second},
		{"cache max bytes", c.CacheMaxBytes, int64(67108864)},
		{"max inflight", c.MaxInflight, 1024},
		{"max conn inflight", c.MaxConnInflight, 256},
		{"drain", c.DrainTimeout, 25 * time.Second},
		{"metrics addr", c.MetricsAddr, "127.0.0.1:9464"},
		{"log format", c.LogFormat, "json"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s: got %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestLoadConfigErrorsNameTheVariable(t *testing.T) {
	tests := []struct{ name, key, value, wantVar string }{
		{"retries not a number", "FENDER_RETRIES", "abc", "FENDER_RETRIES"},
		{"jitter out of range", "FENDER_JITTER", "2", "FENDER_JITTER"},
		{"negative timeout", "FENDER_TIMEOUT", "-1s", "FENDER_TIMEOUT"},
		{"upstreams without =", "FENDER_UPSTREAMS", "bad", "FENDER_UPSTREAMS"},
		{"upstream with ftp", "FENDER_UPSTREAMS", "a=ftp://x", "FENDER_UPSTREAMS"},
		{"policies not JSON", "FENDER_POLICIES", "{bad", "FENDER_POLICIES"},
		{"unknown policy key", "FENDER_POLICIES", `{"ollama":{"nope":1}}`, "FENDER_POLICIES"},
		{"policy for unknown upstream", "FENDER_POLICIES", `{"ghost":{"retries":1}}`, "FENDER_POLICIES"},
		{"unknown fallback", "FENDER_POLICIES", `{"ollama":{"fallback":["ghost"]}}`, "FENDER_POLICIES"},
		{"socket mode not octal", "FENDER_SOCKET_MODE", "999", "FENDER_SOCKET_MODE"},
		{"admin uid not a number", "FENDER_ADMIN_UIDS", "root", "FENDER_ADMIN_UIDS"},
		{"log format", "FENDER_LOG_FORMAT", "xml", "FENDER_LOG_FORMAT"},
		{"cache entries zero", "FENDER_CACHE_MAX_ENTRIES", "0", "FENDER_CACHE_MAX_ENTRIES"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.key, tt.value)
			_, err := LoadConfig()
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *ConfigError", err)
			}
			if ce.Var != tt.wantVar || strings.Contains(ce.Error(), "\n") {
				t.Errorf("got %q, want one line naming %s", ce.Error(), tt.wantVar)
			}
		})
	}
}

func TestLoadConfigPolicies(t *testing.T) {
	t.Setenv("FENDER_UPSTREAMS", "llm=http://127.0.0.1:1,small=http://u:secret@127.0.0.1:2/v1")
	t.Setenv("FENDER_RETRIES", "4")
	t.Setenv("FENDER_POLICIES", `{"llm":{"retries":1,"timeout":"2s","breaker_cooldown":1500,"fallback":["small:phi3"]}}`)
	c, err := LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	llm, small := c.PerUps["llm"], c.PerUps["small"]
	if llm.Retries != 1 || llm.Timeout != 2*time.Second || llm.BreakerCooldown != 1500*time.Millisecond {
		t.Errorf("llm: got retries %d timeout %s cooldown %s, want 1, 2s, 1.5s", llm.Retries, llm.Timeout, llm.BreakerCooldown)
	}
	if len(llm.Fallback) != 1 || llm.Fallback[0] != "small:phi3" {
		t.Errorf("llm fallback: got %v", llm.Fallback)
	}
	if small.Retries != 4 {
		t.Errorf("small keeps the environment's retries: got %d, want 4", small.Retries)
	}
}

func TestUpstreamsErrorHidesCredentials(t *testing.T) {
	t.Setenv("FENDER_UPSTREAMS", "a=http://user:hunter2@host:bad")
	_, err := LoadConfig()
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("got %v, want an error without the password", err)
	}
}
