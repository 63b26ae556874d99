package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestStaleSocketReplaced checks that a leftover socket file nobody listens
// on is removed at start (SPEC 8).
func TestStaleSocketReplaced(t *testing.T) {
	t.Parallel()
	sock := socketPath(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("leftover socket: %v", err)
	}
	f := startFender(t, map[string]string{"FENDER_SOCKET": sock, "FENDER_UPSTREAMS": upstreams("up", refusedURL(t))})
	f.Dial(t).Ping(t)
}

// TestLiveSocketNotStolen checks that a socket a live process listens on
// makes a second fender exit with status 1, leaving the socket to its owner
// (SPEC 8).
func TestLiveSocketNotStolen(t *testing.T) {
	t.Parallel()
	ups := upstreams("up", refusedURL(t))
	t.Run("another fender", func(t *testing.T) {
		t.Parallel()
		first := startFender(t, map[string]string{"FENDER_UPSTREAMS": ups})
		res := runFender(t, map[string]string{"FENDER_SOCKET": first.Socket, "FENDER_UPSTREAMS": ups})
		if res.Code != 1 {
			t.Errorf("second fender exit status: got %d, want 1 (stderr: %s)", res.Code, tail(res.Stderr, 2048))
		}
		if res.Stderr == "" {
			t.Errorf("second fender: nothing on stderr, want a clear message")
		}
		first.Dial(t).Ping(t)
	})
	t.Run("plain listener", func(t *testing.T) {
		t.Parallel()
		sock := socketPath(t)
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		accepted := make(chan net.Conn, 16)
		go func() {
			defer close(accepted)
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- conn
			}
		}()
		t.Cleanup(func() {
			ln.Close()
			for conn := range accepted {
				conn.Close()
			}
		})
		res := runFender(t, map[string]string{"FENDER_SOCKET": sock, "FENDER_UPSTREAMS": ups})
		if res.Code != 1 {
			t.Errorf("fender exit status: got %d, want 1 (stderr: %s)", res.Code, tail(res.Stderr, 2048))
		}
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			t.Fatalf("the listener's socket is gone: %v", err)
		}
		conn.Close()
	})
}

// TestSocketMode checks the socket's file mode: 0660 by default,
// FENDER_SOCKET_MODE when set (SPEC 7).
func TestSocketMode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		value string
		want  fs.FileMode
	}{{"", 0o660}, {"0600", 0o600}} {
		t.Run(tc.want.String(), func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"FENDER_UPSTREAMS": upstreams("up", refusedURL(t))}
			if tc.value != "" {
				env["FENDER_SOCKET_MODE"] = tc.value
			}
			f := startFender(t, env)
			fi, err := os.Stat(f.Socket)
			if err != nil {
				t.Fatalf("stat socket: %v", err)
			}
			if got := fi.Mode().Perm(); got != tc.want {
				t.Errorf("socket mode: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSIGTERMFinishesInFlight sends SIGTERM with 50 calls in flight on a
// slow upstream: all 50 are answered ok, fender exits 0 and removes its
// socket (SPEC 8).
func TestSIGTERMFinishesInFlight(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := f.Dial(t)
	const n = 50
	chans := make([]<-chan Resp, n)
	for i := range n {
		chans[i] = c.Send(t, callReq("up", fmt.Sprintf("/slow?ms=300&i=%d", i), "id", i))
	}
	u.WaitHits(t, "/slow", n, 10*time.Second)
	f.Signal(t, syscall.SIGTERM)
	for i, ch := range chans {
		r := c.Wait(t, ch)
		if !r.OK {
			t.Errorf("call %d in flight at SIGTERM: got %s, want ok", i, r.Raw)
		}
	}
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
	for i := range n {
		if got := c.Count(fmt.Sprint(i)); got != 1 {
			t.Errorf("answers to id %d: got %d, want 1", i, got)
		}
	}
	wantSocketGone(t, f.Socket)
}

// TestSIGTERMDrainTimeout sends SIGTERM while calls hang: fender stops
// accepting connections, answers them shutting_down when
// FENDER_DRAIN_TIMEOUT ends, and exits 0 (SPEC 8).
func TestSIGTERMDrainTimeout(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	const drain = 1 * time.Second
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":     upstreams("up", u.URL),
		"FENDER_DRAIN_TIMEOUT": drain.String(),
	})
	c := f.Dial(t)
	var chans []<-chan Resp
	for range 3 {
		chans = append(chans, c.Send(t, callReq("up", "/hang", "timeout_ms", 20000)))
	}
	u.WaitHits(t, "/hang", 3, 10*time.Second)
	start := time.Now()
	f.Signal(t, syscall.SIGTERM)

	// While draining, new connections are refused.
	refused := false
	for time.Since(start) < drain/2 {
		conn, err := net.DialTimeout("unix", f.Socket, 100*time.Millisecond)
		if err != nil {
			refused = true
			break
		}
		conn.Close()
		time.Sleep(10 * time.Millisecond)
	}
	if !refused {
		t.Errorf("fender still accepted connections %v after SIGTERM", drain/2)
	}

	for _, ch := range chans {
		r := c.Wait(t, ch)
		wantError(t, r, "shutting_down", true)
	}
	wantBetween(t, "answers after SIGTERM", time.Since(start), drain-50*time.Millisecond, drain+2*slack)
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
	wantSocketGone(t, f.Socket)
}

// TestSIGINTExits checks that SIGINT stops an idle fender with status 0 and
// removes the socket (SPEC 8).
func TestSIGINTExits(t *testing.T) {
	t.Parallel()
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", refusedURL(t))})
	f.Signal(t, syscall.SIGINT)
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
	wantSocketGone(t, f.Socket)
}

// TestClientDisconnectCancels checks that a client that goes away cancels
// its in-flight upstream call (SPEC 8).
func TestClientDisconnectCancels(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := f.Dial(t)
	c.Send(t, callReq("up", "/hang", "timeout_ms", 20000))
	u.WaitHits(t, "/hang", 1, 10*time.Second)
	c.Close()
	u.WaitCancelled(t, 1, 3*time.Second)
	f.Dial(t).Ping(t)
}

func wantSocketGone(t testing.TB, sock string) {
	t.Helper()
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file %s after exit: got err %v, want it removed", sock, err)
	}
}
