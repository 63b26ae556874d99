package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logLine is one line of fender's stderr decoded as a JSON object; Obj is
// nil when the line is not one.
type logLine struct {
	Raw string
	Obj map[string]any
}

// logLines splits stderr into lines, skipping empty ones.
func logLines(stderr string) []logLine {
	var out []logLine
	for _, l := range strings.Split(stderr, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		ll := logLine{Raw: l}
		var obj map[string]any
		if json.Unmarshal([]byte(l), &obj) == nil {
			ll.Obj = obj
		}
		out = append(out, ll)
	}
	return out
}

// Str is the field k as text: a string as is, anything else as JSON; ""
// when absent.
func (l logLine) Str(k string) string {
	v, ok := l.Obj[k]
	if !ok {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// Has reports whether the line has field k.
func (l logLine) Has(k string) bool {
	_, ok := l.Obj[k]
	return ok
}

// Level is the zerolog level of the line.
func (l logLine) Level() string { return l.Str("level") }

// Mentions reports whether the message or some string field of the line
// contains s, case-insensitively.
func (l logLine) Mentions(s string) bool {
	s = strings.ToLower(s)
	for _, v := range l.Obj {
		if str, ok := v.(string); ok && strings.Contains(strings.ToLower(str), s) {
			return true
		}
	}
	return false
}

// findLogs lists the JSON lines of stderr for which pred holds.
func findLogs(stderr string, pred func(logLine) bool) []logLine {
	var out []logLine
	for _, l := range logLines(stderr) {
		if l.Obj != nil && pred(l) {
			out = append(out, l)
		}
	}
	return out
}

// nonJSONLines lists the lines of stderr that are not one JSON object.
func nonJSONLines(stderr string) []string {
	var out []string
	for _, l := range logLines(stderr) {
		if l.Obj == nil {
			out = append(out, l.Raw)
		}
	}
	return out
}

// logsEnv is an environment with a breaker that opens after 2 failures
// and single attempts.
func logsEnv(ups string) map[string]string {
	return map[string]string{
		"FENDER_UPSTREAMS":        ups,
		"FENDER_RETRIES":          "0",
		"FENDER_BACKOFF_INITIAL":  "1ms",
		"FENDER_BACKOFF_MAX":      "2ms",
		"FENDER_BREAKER_FAILURES": "2",
		"FENDER_BREAKER_COOLDOWN": "1m",
		"FENDER_RETRY_BUDGET_MIN": "100",
		"FENDER_DEADLINE":         "20s",
	}
}

// logWait bounds how long a log line may lag behind what caused it.
const logWait = 5 * time.Second

// waitLog waits until some JSON line of stderr satisfies pred and returns
// it; it fails the test (naming what) when none does.
func waitLog(t testing.TB, f *Fender, what string, pred func(logLine) bool) logLine {
	t.Helper()
	var found logLine
	ok := f.stderr.WaitFor(func(s string) bool {
		if ls := findLogs(s, pred); len(ls) > 0 {
			found = ls[0]
			return true
		}
		return false
	}, logWait)
	if !ok {
		t.Errorf("no log line for %s within %v; stderr:\n%s", what, logWait, tail(f.Stderr(), 8<<10))
	}
	return found
}

// fromUID reports whether some field named like a uid holds uid.
func (l logLine) fromUID(uid int) bool {
	for k, v := range l.Obj {
		if strings.Contains(strings.ToLower(k), "uid") && fmt.Sprint(v) == strconv.Itoa(uid) {
			return true
		}
	}
	return false
}

// isRequestLine reports whether l is a per-request line.
func isRequestLine(l logLine) bool {
	return l.Has("attempts") && l.Has("latency_ms") && l.Has("code")
}

// TestLogsJSONEvents checks the zerolog JSON events on stderr: one JSON
// object with a level per line; the start event at info with the effective
// upstreams and policies; a breaker opening at warn with upstream, model
// and to; configure, purge and reset at info with the peer's uid; no
// per-request lines without FENDER_LOG_REQUESTS; drain and exit events on
// SIGTERM (SPEC 9).
func TestLogsJSONEvents(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := logsEnv(upstreams("llm", u.URL))
	env["FENDER_POLICIES"] = `{"llm":{"retries":1,"cache_ttl":"90s"}}`
	f := startFender(t, env)
	c := f.Dial(t)
	addr := strings.TrimPrefix(u.URL, "http://")

	waitLog(t, f, "the start event at info with upstreams and policies", func(l logLine) bool {
		return l.Level() == "info" && strings.Contains(l.Raw, `"llm"`) && strings.Contains(l.Raw, addr) &&
			strings.Contains(l.Raw, "retries") && strings.Contains(l.Raw, "cache_ttl")
	})

	for range 2 {
		wantError(t, c.Call(t, callReq("llm", "/status/500", "model", "m1", "retries", 0)), "upstream_status", true)
	}
	waitLog(t, f, "the breaker opening at warn with upstream, model, to", func(l logLine) bool {
		return l.Level() == "warn" && l.Str("upstream") == "llm" && l.Str("model") == "m1" && l.Str("to") == "open"
	})

	uid := os.Getuid()
	wantOK(t, c.Call(t, Req{"op": "configure", "upstream": "llm", "policy": map[string]any{"retries": 2}}))
	wantOK(t, c.Call(t, Req{"op": "purge"}))
	wantOK(t, c.Call(t, Req{"op": "reset", "upstream": "llm"}))
	for _, op := range []string{"configure", "purge", "reset"} {
		waitLog(t, f, op+" at info with the peer uid", func(l logLine) bool {
			return l.Level() == "info" && l.Mentions(op) && l.fromUID(uid)
		})
	}

	wantOK(t, c.Call(t, callReq("llm", "/ok", "model", "m2")))
	f.Signal(t, syscall.SIGTERM)
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
	stderr := f.Stderr()
	lines := logLines(stderr)
	drain := -1
	exit := -1
	for i, l := range lines {
		if l.Obj == nil {
			t.Errorf("stderr line %d is not a JSON object: %q", i+1, l.Raw)
			continue
		}
		if !l.Has("level") {
			t.Errorf("stderr line %d has no level: %s", i+1, l.Raw)
		}
		if isRequestLine(l) {
			t.Errorf("a per-request line without FENDER_LOG_REQUESTS: %s", l.Raw)
		}
		lvl := l.Level()
		if lvl != "info" && lvl != "warn" {
			continue
		}
		if drain < 0 && l.Mentions("drain") {
			drain = i
		}
		if drain >= 0 && (l.Mentions("exit") || l.Mentions("stopped")) {
			exit = i
		}
	}
	if drain < 0 {
		t.Errorf("no drain event at info or warn after SIGTERM; stderr:\n%s", tail(stderr, 4<<10))
	}
	if exit < 0 {
		t.Errorf("no exit event at info or warn after the drain; stderr:\n%s", tail(stderr, 4<<10))
	}
}

// TestLogRequests checks FENDER_LOG_REQUESTS=true: one line per call, with
// id (as sent, string or number), upstream, model, code, status,
// attempts, cached and latency_ms (SPEC 9).
func TestLogRequests(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := logsEnv(upstreams("llm", u.URL))
	env["FENDER_BREAKER_FAILURES"] = "1000"
	env["FENDER_LOG_REQUESTS"] = "true"
	f := startFender(t, env)
	c := f.Dial(t)

	type want struct {
		id       any
		code     string
		status   int
		attempts int
		cached   bool
	}
	wants := []want{
		{"r-ok", "ok", 200, 1, false},
		{7, "upstream_status", 503, 2, false},
		{"r-miss", "ok", 200, 1, false},
		{"r-hit", "ok", 200, 0, true},
	}
	wantOK(t, c.Call(t, callReq("llm", "/ok", "id", "r-ok", "model", "m1")))
	wantError(t, c.Call(t, callReq("llm", "/status/503", "id", 7, "model", "m1", "retries", 1)), "upstream_status", true)
	wantMiss(t, c.Call(t, cacheReq("llm", "/ok/c", "id", "r-miss", "model", "m1")))
	wantHit(t, c.Call(t, cacheReq("llm", "/ok/c", "id", "r-hit", "model", "m1")))

	f.stderr.WaitFor(func(s string) bool { return len(findLogs(s, isRequestLine)) >= len(wants) }, logWait)
	reqLines := findLogs(f.Stderr(), isRequestLine)
	if len(reqLines) != len(wants) {
		t.Errorf("per-request lines: got %d, want %d (one per call); stderr:\n%s", len(reqLines), len(wants), tail(f.Stderr(), 8<<10))
	}
	for _, w := range wants {
		id, _ := json.Marshal(w.id)
		var mine []logLine
		for _, l := range findLogs(f.Stderr(), func(l logLine) bool { return l.Has("id") }) {
			if got, _ := json.Marshal(l.Obj["id"]); string(got) == string(id) {
				mine = append(mine, l)
			}
		}
		if len(mine) != 1 {
			t.Errorf("lines with id %s: got %d, want 1: %v", id, len(mine), mine)
			continue
		}
		l := mine[0]
		for _, k := range []string{"id", "upstream", "model", "code", "status", "attempts", "cached", "latency_ms"} {
			if !l.Has(k) {
				t.Errorf("request line %s: no field %q", l.Raw, k)
			}
		}
		got := fmt.Sprintf("upstream=%s model=%s code=%s status=%s attempts=%s cached=%s",
			l.Str("upstream"), l.Str("model"), l.Str("code"), l.Str("status"), l.Str("attempts"), l.Str("cached"))
		exp := fmt.Sprintf("upstream=llm model=m1 code=%s status=%d attempts=%d cached=%v", w.code, w.status, w.attempts, w.cached)
		if got != exp {
			t.Errorf("request line for id %s: got %s, want %s (line %s)", id, got, exp, l.Raw)
		}
		if ms, ok := l.Obj["latency_ms"].(float64); !ok || ms < 0 {
			t.Errorf("request line for id %s: latency_ms %v, want a number >= 0", id, l.Obj["latency_ms"])
		}
	}
}

// TestLogFormatConsole checks FENDER_LOG_FORMAT=console: human-readable
// lines, none of them a JSON object (SPEC 7).
func TestLogFormatConsole(t *testing.T) {
	t.Parallel()
	env := logsEnv(upstreams("llm", refusedURL(t)))
	env["FENDER_LOG_FORMAT"] = "console"
	f := startFender(t, env)
	f.Client(t).Ping(t)
	f.Signal(t, syscall.SIGTERM)
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
	lines := logLines(f.Stderr())
	if len(lines) < 2 {
		t.Fatalf("stderr: got %d lines, want at least the start and exit events:\n%s", len(lines), f.Stderr())
	}
	readable := false
	for _, l := range lines {
		if l.Obj != nil {
			t.Errorf("a JSON line in console format: %s", l.Raw)
		}
		if strings.Contains(strings.ToLower(l.Raw), "inf") {
			readable = true
		}
	}
	if !readable {
		t.Errorf("no line shows the info level (INF); stderr:\n%s", f.Stderr())
	}
}

// TestLogLevelWarn checks FENDER_LOG_LEVEL=warn: no info line, so no start
// event, while a breaker opening is still logged at warn (SPEC 7, 9).
func TestLogLevelWarn(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	env := logsEnv(upstreams("llm", u.URL))
	env["FENDER_LOG_LEVEL"] = "warn"
	f := startFender(t, env)
	for range 2 {
		wantError(t, f.Call(t, callReq("llm", "/status/500", "model", "m1")), "upstream_status", true)
	}
	waitLog(t, f, "the breaker opening at warn", func(l logLine) bool {
		return l.Level() == "warn" && l.Str("to") == "open"
	})
	for _, l := range logLines(f.Stderr()) {
		if l.Obj == nil {
			t.Errorf("stderr line is not a JSON object: %q", l.Raw)
			continue
		}
		if lvl := l.Level(); lvl == "info" || lvl == "debug" || lvl == "trace" {
			t.Errorf("a %s line at FENDER_LOG_LEVEL=warn: %s", lvl, l.Raw)
		}
	}
}
