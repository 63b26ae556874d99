package e2e

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// keepAliveUpstream is an upstream that counts the TCP connections fender
// opens to it; idle is its keep-alive idle timeout (0: none), and close
// makes it answer "Connection: close" every time.
func keepAliveUpstream(t *testing.T, idle time.Duration, close bool) (*httptest.Server, *atomic.Int64) {
	var conns atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if close {
			w.Header().Set("Connection", "close")
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	s.Config.IdleTimeout = idle
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, &conns
}

// TestUpstreamKeepAlive checks how fender's upstream connections are kept
// and reused (SPEC is silent; see the README's choices): calls in a row
// share one connection; a connection the upstream closed while idle is
// noticed before reuse, so the next call needs no retry; an upstream that
// answers "Connection: close" gets a new connection per call.
func TestUpstreamKeepAlive(t *testing.T) {
	t.Parallel()
	call := func(f *Fender) Resp {
		t.Helper()
		r := f.Call(t, callReq("up", "/x", "cache", "bypass", "body", map[string]any{"model": "m"}))
		wantOK(t, r)
		if r.Meta == nil || r.Meta.Attempts != 1 {
			t.Fatalf("want 1 attempt, got answer %s", r.Raw)
		}
		return r
	}

	t.Run("reused", func(t *testing.T) {
		t.Parallel()
		u, conns := keepAliveUpstream(t, 0, false)
		f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
		for range 20 {
			call(f)
		}
		if n := conns.Load(); n != 1 {
			t.Errorf("20 calls in a row opened %d connections, want 1", n)
		}
	})

	t.Run("closed while idle", func(t *testing.T) {
		t.Parallel()
		u, conns := keepAliveUpstream(t, 40*time.Millisecond, false)
		f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
		for i := range 4 {
			call(f)
			time.Sleep(150 * time.Millisecond) // the upstream closes the idle connection meanwhile
			if n := conns.Load(); n != int64(i+1) {
				t.Fatalf("after %d calls: %d connections, want %d", i+1, n, i+1)
			}
		}
	})

	t.Run("Connection: close", func(t *testing.T) {
		t.Parallel()
		u, conns := keepAliveUpstream(t, 0, true)
		f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
		for range 5 {
			call(f)
		}
		if n := conns.Load(); n != 5 {
			t.Errorf("5 calls answered Connection: close opened %d connections, want 5", n)
		}
	})
}
