package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// snapshotPaths are the three answers a snapshot test caches; 1 KB bodies,
// so that cutting the file in half cuts inside the entries.
var snapshotPaths = []string{"/snap/1", "/snap/2", "/snap/3"}

// snapshotEnv is a cache environment with FENDER_CACHE_SNAPSHOT set.
func snapshotEnv(u *modelUpstream, file string) map[string]string {
	env := cacheEnv(upstreams("llm", u.URL))
	env["FENDER_CACHE_SNAPSHOT"] = file
	return env
}

// snapshotReq is the cacheable call for path.
func snapshotReq(path string, kv ...any) Req {
	return cacheReq("llm", path, append([]any{"body", map[string]any{"model": "phi3", "prompt": path}}, kv...)...)
}

// fillAndStop caches the snapshot paths (and the extra requests) on a new
// fender, stops it with SIGTERM and checks it exited 0 leaving the file.
// It returns the answers, snapshot paths first.
func fillAndStop(t *testing.T, u *modelUpstream, file string, extra ...Req) []Resp {
	t.Helper()
	for _, p := range snapshotPaths {
		u.Set(p, Behavior{Pad: 1000})
	}
	f := startFender(t, snapshotEnv(u, file))
	var out []Resp
	for _, p := range snapshotPaths {
		r := f.Call(t, snapshotReq(p))
		wantMiss(t, r)
		out = append(out, r)
	}
	for _, req := range extra {
		r := f.Call(t, req)
		wantMiss(t, r)
		out = append(out, r)
	}
	f.closeClient()
	if code := f.Stop(); code != 0 {
		t.Fatalf("exit status after SIGTERM: got %d, want 0; stderr:\n%s", code, tail(f.Stderr(), 8<<10))
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatalf("snapshot after SIGTERM: %v", err)
	}
	if fi.Size() == 0 {
		t.Fatalf("snapshot after SIGTERM: the file is empty")
	}
	return out
}

// TestSnapshotRestart checks FENDER_CACHE_SNAPSHOT across a real restart:
// SIGTERM writes the file; a new fender reads it and answers the cached
// calls from the cache without reaching the upstream; an entry whose TTL
// passed during the downtime is not served fresh, though it still serves
// as a stale entry within cache_stale (SPEC 4, 8).
func TestSnapshotRestart(t *testing.T) {
	t.Parallel()
	u := newModelUpstream(t)
	file := filepath.Join(t.TempDir(), "cache.snap")
	start := time.Now()
	before := fillAndStop(t, u, file,
		snapshotReq("/snap/short", "cache_ttl_ms", 300),
		snapshotReq("/snap/short-stale", "cache_ttl_ms", 300))
	// The short entries expire while fender is down.
	time.Sleep(time.Until(start.Add(300*time.Millisecond + 300*time.Millisecond)))

	f := startFender(t, snapshotEnv(u, file))
	if n := fenderStats(t, f).entries(t); n < len(snapshotPaths) {
		t.Errorf("stats cache_entries after the restart: got %d, want at least %d", n, len(snapshotPaths))
	}
	for i, p := range snapshotPaths {
		t.Run(p, func(t *testing.T) {
			r := f.Call(t, snapshotReq(p))
			wantHit(t, r)
			wantSameBody(t, r, before[i])
			wantStatus(t, r, 200)
			if ct, _ := r.Header("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type: got %q, want application/json", ct)
			}
			wantUpstreamHits(t, u, p, 1)
		})
	}
	t.Run("expired while down", func(t *testing.T) {
		r := f.Call(t, snapshotReq("/snap/short"))
		wantMiss(t, r)
		wantUpstreamHits(t, u, "/snap/short", 2)
	})
	t.Run("expired while down, stale on error", func(t *testing.T) {
		u.Set("/snap/short-stale", Behavior{Status: 503})
		r := f.Call(t, snapshotReq("/snap/short-stale"))
		wantFallback(t, r, "stale", true)
		wantSameBody(t, r, before[len(snapshotPaths)+1])
	})
}

// TestSnapshotBadFile checks that a missing, empty, truncated (a real
// snapshot cut in half) or garbage snapshot file is logged and ignored:
// fender starts, serves, and its cache is empty, with no entry half loaded
// (SPEC 4).
func TestSnapshotBadFile(t *testing.T) {
	t.Parallel()
	realFile := filepath.Join(t.TempDir(), "real.snap")
	fillAndStop(t, newModelUpstream(t), realFile)
	data, err := os.ReadFile(realFile)
	if err != nil {
		t.Fatalf("read snapshot: %v", err)
	}

	for _, tc := range []struct {
		name    string
		content []byte // nil: no file
	}{
		{"missing", nil},
		{"empty", []byte{}},
		{"truncated", data[:len(data)/2]},
		{"garbage", []byte("\x00\x01not a snapshot at all\xff\xfe{\"llm\":[}\n" + strings.Repeat("garbage ", 200))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "cache.snap")
			if tc.content != nil {
				if err := os.WriteFile(file, tc.content, 0o600); err != nil {
					t.Fatalf("write snapshot: %v", err)
				}
			}
			u := newModelUpstream(t)
			f := startFender(t, snapshotEnv(u, file))
			if n := fenderStats(t, f).entries(t); n != 0 {
				t.Errorf("stats cache_entries at start: got %d, want 0", n)
			}
			for _, p := range snapshotPaths {
				wantMiss(t, f.Call(t, snapshotReq(p)))
				wantUpstreamHits(t, u, p, 1)
			}
			corrupt := tc.content != nil
			logged := f.WaitStderr(func(line string) bool { return snapshotLogged(line, corrupt) }, 3*time.Second)
			if !logged {
				what := "a JSON log line whose message mentions the snapshot"
				if corrupt {
					what += ", at level warn or error"
				}
				t.Errorf("stderr: no %s", what)
			}
		})
	}
}

// snapshotLogged reports whether line is a JSON log event about the
// snapshot, at warn or error when warn is set.
func snapshotLogged(line string, warn bool) bool {
	var ev struct {
		Level   string `json:"level"`
		Message string `json:"message"`
	}
	if json.Unmarshal([]byte(line), &ev) != nil {
		return false
	}
	if !strings.Contains(strings.ToLower(ev.Message), "snapshot") {
		return false
	}
	return !warn || ev.Level == "warn" || ev.Level == "error"
}
