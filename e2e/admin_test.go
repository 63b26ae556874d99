package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// policyKeys are the keys of an effective policy (SPEC 7).
var policyKeys = []string{"timeout", "deadline", "retries", "backoff_initial", "backoff_max",
	"backoff_multiplier", "jitter", "retry_budget", "retry_budget_min", "breaker_failures",
	"breaker_successes", "breaker_cooldown", "breaker_half_open_max", "cache_ttl", "cache_stale",
	"cache_vary_headers", "fallback", "stream_end"}

// adminEnv is an environment with 2 fast retries and a breaker that opens
// after failures (1000 unless given).
func adminEnv(ups, failures string) map[string]string {
	return map[string]string{
		"FENDER_UPSTREAMS":        ups,
		"FENDER_RETRIES":          "2",
		"FENDER_BACKOFF_INITIAL":  "1ms",
		"FENDER_BACKOFF_MAX":      "2ms",
		"FENDER_RETRY_BUDGET_MIN": "100",
		"FENDER_BREAKER_FAILURES": failures,
		"FENDER_BREAKER_COOLDOWN": "1m",
		"FENDER_DEADLINE":         "20s",
	}
}

// answerInt is the integer field key of an ok answer.
func answerInt(t testing.TB, r Resp, key string) int {
	t.Helper()
	wantOK(t, r)
	var m map[string]json.RawMessage
	var n int
	if err := json.Unmarshal([]byte(r.Raw), &m); err != nil || json.Unmarshal(m[key], &n) != nil {
		t.Fatalf("answer %s: want an integer %q", r.Raw, key)
	}
	return n
}

// policyOf is the policy object of a configure answer; it must hold every
// policy key.
func policyOf(t testing.TB, r Resp) map[string]any {
	t.Helper()
	wantOK(t, r)
	var a struct {
		Policy map[string]any `json:"policy"`
	}
	if err := json.Unmarshal([]byte(r.Raw), &a); err != nil || a.Policy == nil {
		t.Fatalf("configure answer %s: want a policy object", r.Raw)
	}
	for _, k := range policyKeys {
		if _, ok := a.Policy[k]; !ok {
			t.Errorf("configure answer: policy has no %q, want the whole effective policy: %s", k, r.Raw)
		}
	}
	return a.Policy
}

// healthUpstreams lists the upstream names of a health answer.
func healthUpstreams(t testing.TB, c *Client) []string {
	t.Helper()
	r := c.Call(t, Req{"op": "health"})
	wantOK(t, r)
	return slices.Sorted(maps.Keys(r.Upstreams))
}

// wantAdminLog waits for op logged at info with peer_uid = our uid.
func wantAdminLog(t testing.TB, f *Fender, op string) {
	t.Helper()
	uid := strconv.Itoa(os.Getuid())
	waitLog(t, f, op+" at info with peer_uid", func(l logLine) bool {
		return l.Level() == "info" && l.Mentions(op) && l.Str("peer_uid") == uid
	})
}

// TestAdminConfigure changes an existing upstream's policy (the answer is
// the whole effective policy, the next call uses it), adds an upstream and
// calls it, and checks that an invalid configure is bad_request and
// changes nothing (SPEC 5, 7, 9).
func TestAdminConfigure(t *testing.T) {
	t.Parallel()
	u, u2 := newUpstream(t), newUpstream(t)
	f := startFender(t, adminEnv(upstreams("up", u.URL), "1000"))
	c := f.Dial(t)
	wantAttempts(t, c.Call(t, callReq("up", "/status/503")), 3)

	p := policyOf(t, c.Call(t, Req{"op": "configure", "upstream": "up", "policy": map[string]any{"retries": 0}}))
	if p["retries"] != 0.0 || p["breaker_failures"] != 1000.0 || p["jitter"] != 0.25 {
		t.Errorf("effective policy: got retries %v, breaker_failures %v, jitter %v, want 0, 1000, 0.25", p["retries"], p["breaker_failures"], p["jitter"])
	}
	r := c.Call(t, callReq("up", "/status/503"))
	wantError(t, r, "upstream_status", true)
	wantAttempts(t, r, 1)
	wantHits(t, u, "/status/503", 4)
	wantAdminLog(t, f, "configure")

	policyOf(t, c.Call(t, Req{"op": "configure", "upstream": "extra", "url": u2.URL}))
	wantOK(t, c.Call(t, callReq("extra", "/ok/new")))
	wantHits(t, u2, "/ok/new", 1)
	if got := healthUpstreams(t, c); !slices.Equal(got, []string{"extra", "up"}) {
		t.Errorf("health upstreams after adding extra: got %v, want [extra up]", got)
	}

	for _, tc := range []struct {
		name string
		req  Req
	}{
		{"unknown key", Req{"upstream": "up", "policy": map[string]any{"retries": 5, "nope": 1}}},
		{"jitter 2", Req{"upstream": "up", "policy": map[string]any{"retries": 5, "jitter": 2}}},
		{"negative retries", Req{"upstream": "up", "policy": map[string]any{"retries": -1}}},
		{"bad duration", Req{"upstream": "up", "policy": map[string]any{"retries": 5, "timeout": "soon"}}},
		{"unknown fallback", Req{"upstream": "up", "policy": map[string]any{"retries": 5, "fallback": []string{"ghost"}}}},
		{"policy not an object", Req{"upstream": "up", "policy": "retries=5"}},
		{"url not a string", Req{"upstream": "up", "url": 5}},
		{"new upstream without url", Req{"upstream": "ghost", "policy": map[string]any{"retries": 1}}},
		{"new upstream with a bad url", Req{"upstream": "ghost", "url": "::not a url"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req["op"] = "configure"
			wantError(t, c.Call(t, tc.req), "bad_request", false)
		})
	}
	r = c.Call(t, callReq("up", "/status/503"))
	wantAttempts(t, r, 1)
	if got := healthUpstreams(t, c); !slices.Equal(got, []string{"extra", "up"}) {
		t.Errorf("health upstreams after the invalid configures: got %v, want [extra up]", got)
	}
	wantError(t, c.Call(t, callReq("ghost", "/ok")), "unknown_upstream", false)
	p = policyOf(t, c.Call(t, Req{"op": "configure", "upstream": "up"})) // no policy: changes nothing
	if p["retries"] != 0.0 || p["jitter"] != 0.25 || fmt.Sprint(p["fallback"]) != "[]" || p["timeout"] != "10s" {
		t.Errorf("policy after the invalid configures: got retries %v, jitter %v, fallback %v, timeout %v, want 0, 0.25, [], 10s",
			p["retries"], p["jitter"], p["fallback"], p["timeout"])
	}
}

// TestAdminPurge purges one upstream's cache entries, then all: each
// answers purged N and the next call misses (SPEC 4, 5, 9).
func TestAdminPurge(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, adminEnv(upstreams("up", u.URL, "extra", u.URL), "1000"))
	c := f.Dial(t)
	purgeReq := func(upstream string) Req {
		if upstream == "" {
			return Req{"op": "purge"}
		}
		return Req{"op": "purge", "upstream": upstream}
	}
	if n := answerInt(t, c.Call(t, purgeReq("")), "purged"); n != 0 {
		t.Errorf("purge of an empty cache: got purged %d, want 0", n)
	}
	for _, r := range []Req{cacheReq("up", "/ok/a"), cacheReq("up", "/ok/b"), cacheReq("extra", "/ok/c")} {
		wantMiss(t, c.Call(t, maps.Clone(r)))
		wantHit(t, c.Call(t, maps.Clone(r)))
	}
	if n := answerInt(t, c.Call(t, purgeReq("up")), "purged"); n != 2 {
		t.Errorf("purge up: got purged %d, want 2", n)
	}
	wantMiss(t, c.Call(t, cacheReq("up", "/ok/a")))
	wantHit(t, c.Call(t, cacheReq("extra", "/ok/c")))
	if n := answerInt(t, c.Call(t, purgeReq("")), "purged"); n != 2 {
		t.Errorf("purge all: got purged %d, want 2 (up /ok/a and extra /ok/c)", n)
	}
	wantMiss(t, c.Call(t, cacheReq("extra", "/ok/c")))
	wantMiss(t, c.Call(t, cacheReq("up", "/ok/a")))
	wantHits(t, u, "/ok/a", 3)
	wantAdminLog(t, f, "purge")
}

// TestAdminReset opens two breakers and resets one by model, then all of
// the upstream: reset N counts the breakers matched, and the next call
// reaches the upstream (SPEC 3, 5, 9).
func TestAdminReset(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, adminEnv(upstreams("up", u.URL), "2"))
	c := f.Dial(t)
	for _, model := range []string{"m1", "m2"} {
		for range 2 {
			wantError(t, c.Call(t, callReq("up", "/status/500", "model", model, "retries", 0)), "upstream_status", true)
		}
		wantError(t, c.Call(t, callReq("up", "/ok", "model", model)), "circuit_open", true)
	}
	wantHits(t, u, "/ok", 0)
	health := c.Call(t, Req{"op": "health"})
	breakers := len(health.Upstreams["up"].Breakers)
	if breakers < 2 {
		t.Fatalf("health: got breakers %v of up, want at least m1 and m2", health.Upstreams["up"].Breakers)
	}

	if n := answerInt(t, c.Call(t, Req{"op": "reset", "upstream": "up", "model": "m1"}), "reset"); n != 1 {
		t.Errorf("reset up m1: got reset %d, want 1", n)
	}
	r := c.Call(t, callReq("up", "/ok", "model", "m1"))
	wantOK(t, r)
	wantBreaker(t, r, "closed")
	wantHits(t, u, "/ok", 1)
	wantError(t, c.Call(t, callReq("up", "/ok", "model", "m2")), "circuit_open", true)

	if n := answerInt(t, c.Call(t, Req{"op": "reset", "upstream": "up", "model": "nope"}), "reset"); n != 0 {
		t.Errorf("reset of a model with no breaker: got reset %d, want 0", n)
	}
	if n := answerInt(t, c.Call(t, Req{"op": "reset", "upstream": "up"}), "reset"); n != breakers {
		t.Errorf("reset up: got reset %d, want %d (its breakers in health)", n, breakers)
	}
	wantOK(t, c.Call(t, callReq("up", "/ok", "model", "m2")))
	wantHits(t, u, "/ok", 2)
	wantAdminLog(t, f, "reset")
}

// TestAdminForbidden runs fender with FENDER_ADMIN_UIDS naming another
// uid: configure, purge and reset are forbidden and change nothing; the
// other ops still work (SPEC 5).
func TestAdminForbidden(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := adminEnv(upstreams("up", u.URL), "3")
	env["FENDER_ADMIN_UIDS"] = "4242"
	f := startFender(t, env)
	c := f.Dial(t)
	wantMiss(t, c.Call(t, cacheReq("up", "/ok/a")))
	for range 3 {
		c.Call(t, callReq("up", "/status/500", "model", "m1", "retries", 0))
	}
	for _, req := range []Req{
		{"op": "configure", "upstream": "up", "policy": map[string]any{"retries": 0}},
		{"op": "configure", "upstream": "extra", "url": u.URL},
		{"op": "purge"},
		{"op": "purge", "upstream": "up"},
		{"op": "reset"},
		{"op": "reset", "upstream": "up", "model": "m1"},
	} {
		wantError(t, c.Call(t, req), "forbidden", false)
	}
	wantAttempts(t, c.Call(t, callReq("up", "/status/503")), 3)
	if got := healthUpstreams(t, c); !slices.Equal(got, []string{"up"}) {
		t.Errorf("health upstreams: got %v, want [up]", got)
	}
	wantHit(t, c.Call(t, cacheReq("up", "/ok/a")))
	wantError(t, c.Call(t, callReq("up", "/ok", "model", "m1")), "circuit_open", true)
	c.Ping(t)
	wantOK(t, c.Call(t, Req{"op": "stats"}))
}

// TestAdminAllowedUIDs runs fender with FENDER_ALLOWED_UIDS naming another
// uid: a connection is closed at once without any answer, and a warn line
// names our uid; with our uid in the list, we are served (SPEC 7).
func TestAdminAllowedUIDs(t *testing.T) {
	t.Parallel()
	ups := upstreams("up", refusedURL(t))
	f := launchFender(t, socketPath(t), map[string]string{"FENDER_UPSTREAMS": ups, "FENDER_ALLOWED_UIDS": "4242"})
	t.Cleanup(func() { f.Stop() })

	silent := dialWhenListening(t, f.Socket)
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := silent.Read(make([]byte, 256)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("read on a connection from a uid not allowed: got %d bytes, %v, want 0 bytes and EOF", n, err)
	}
	talker := dialWhenListening(t, f.Socket)
	defer talker.Close()
	_ = talker.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = talker.Write([]byte(`{"id":1,"op":"ping"}` + "\n"))
	n, err := talker.Read(make([]byte, 256))
	if ne, ok := err.(net.Error); n != 0 || err == nil || ok && ne.Timeout() {
		t.Errorf("read after a ping from a uid not allowed: got %d bytes, %v, want no answer and the connection closed", n, err)
	}
	uid := os.Getuid()
	waitLog(t, f, "a warn line with the refused uid", func(l logLine) bool {
		return l.Level() == "warn" && l.fromUID(uid)
	})
	if f.Exited() {
		t.Errorf("fender exited (status %d) after refusing a peer", f.ExitCode())
	}

	ok := startFender(t, map[string]string{"FENDER_UPSTREAMS": ups, "FENDER_ALLOWED_UIDS": fmt.Sprintf("4242,%d", uid)})
	ok.Dial(t).Ping(t)
}

// TestAdminSocketFile checks FENDER_SOCKET_MODE and that a socket in a
// directory that does not exist yet gets the directory created with mode
// 0750 (SPEC 7).
func TestAdminSocketFile(t *testing.T) {
	t.Parallel()
	ups := upstreams("up", refusedURL(t))
	for _, mode := range []fs.FileMode{0o600, 0o640} {
		t.Run(fmt.Sprintf("mode %04o", mode), func(t *testing.T) {
			t.Parallel()
			f := startFender(t, map[string]string{"FENDER_UPSTREAMS": ups, "FENDER_SOCKET_MODE": fmt.Sprintf("%04o", mode)})
			fi, err := os.Stat(f.Socket)
			if err != nil {
				t.Fatalf("stat socket: %v", err)
			}
			if got := fi.Mode().Perm(); got != mode || fi.Mode().Type() != fs.ModeSocket {
				t.Errorf("socket: got %v, want a socket with mode %v", fi.Mode(), mode)
			}
		})
	}
	t.Run("missing directory", func(t *testing.T) {
		t.Parallel()
		base := filepath.Dir(socketPath(t))
		sock := filepath.Join(base, "run", "fender", "f.sock")
		f := startFender(t, map[string]string{"FENDER_UPSTREAMS": ups, "FENDER_SOCKET": sock})
		for _, dir := range []string{filepath.Dir(sock), filepath.Dir(filepath.Dir(sock))} {
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatalf("stat %s: %v", dir, err)
			}
			if got := fi.Mode(); got != fs.ModeDir|0o750 {
				t.Errorf("directory %s: got %v, want %v", dir, got, fs.ModeDir|0o750)
			}
		}
		f.Dial(t).Ping(t)
	})
}
