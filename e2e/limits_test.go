package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRequestTooLarge checks that a line over FENDER_MAX_REQUEST_BYTES is
// answered too_large and the connection stays usable, while a line under it
// is served (SPEC 1, 7).
func TestRequestTooLarge(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":         upstreams("up", u.URL),
		"FENDER_MAX_REQUEST_BYTES": "4096",
	})
	c := f.Dial(t)

	t.Run("json line", func(t *testing.T) {
		c.WriteRaw(t, `{"id":"big1","upstream":"up","path":"/ok","body_text":"`+strings.Repeat("x", 10000)+`"}`+"\n")
		r := c.Next(t)
		if got := idKey(r.ID); got != `"big1"` && got != "null" {
			t.Errorf("id: got %s, want \"big1\" or null", got)
		}
		wantError(t, r, "too_large", false)
		c.Ping(t)
	})
	t.Run("garbage line", func(t *testing.T) {
		c.WriteRaw(t, strings.Repeat("garbage ", 25000)+"\n")
		r := c.Next(t)
		wantError(t, r, "too_large", false)
		c.Ping(t)
	})
	t.Run("under the limit", func(t *testing.T) {
		text := strings.Repeat("y", 3000)
		r := c.Call(t, callReq("up", "/ok", "body_text", text))
		wantOK(t, r)
		if got := decodeEcho(t, r).Body; got != text {
			t.Errorf("upstream got a body of %d bytes, want %d", len(got), len(text))
		}
	})
	wantHits(t, u, "/ok", 1)
	if extra := c.Unmatched(); len(extra) > 0 {
		t.Errorf("unexpected extra answers: %v", extra)
	}
}

// TestResponseTooLarge checks that an upstream body over
// FENDER_MAX_RESPONSE_BYTES is too_large, and one under it is served (SPEC 1).
func TestResponseTooLarge(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":          upstreams("up", u.URL),
		"FENDER_MAX_RESPONSE_BYTES": "1024",
	})
	r := f.Call(t, callReq("up", "/big?n=5000"))
	wantError(t, r, "too_large", false)

	r = f.Call(t, callReq("up", "/big?n=500"))
	wantOK(t, r)
	if want := fmt.Sprintf("%q", strings.Repeat("x", 500)); string(r.Body) != want {
		t.Errorf("body: got %.40s..., want a string of 500 x", r.Body)
	}
	f.Client(t).Ping(t)
}

// TestOverloaded fills FENDER_MAX_INFLIGHT=2 with hanging calls: the next
// call is overloaded (retryable) without reaching the upstream, and calls
// are served again once the hanging ones are gone (SPEC 1).
func TestOverloaded(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":    upstreams("up", u.URL),
		"FENDER_MAX_INFLIGHT": "2",
		"FENDER_RETRIES":      "0",
	})
	hanging := f.Dial(t)
	hanging.Send(t, callReq("up", "/hang", "timeout_ms", 20000))
	hanging.Send(t, callReq("up", "/hang", "timeout_ms", 20000))
	u.WaitHits(t, "/hang", 2, 10*time.Second)

	c := f.Dial(t)
	r := c.Call(t, callReq("up", "/ok"))
	wantError(t, r, "overloaded", true)
	wantHits(t, u, "/ok", 0)

	hanging.Close() // cancels the two hanging calls
	u.WaitCancelled(t, 2, 5*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r = c.Call(t, callReq("up", "/ok"))
		if r.OK || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the in-flight count drops just after the cancellation
	}
	wantOK(t, r)
}

// TestConnInflightBackpressure sends 10 calls to a slow upstream on one
// connection with FENDER_MAX_CONN_INFLIGHT=2: all 10 are answered exactly
// once and at most 2 run at a time (SPEC 7).
func TestConnInflightBackpressure(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":         upstreams("up", u.URL),
		"FENDER_MAX_CONN_INFLIGHT": "2",
	})
	c := f.Dial(t)
	const n = 10
	chans := make([]<-chan Resp, n)
	for i := range n {
		chans[i] = c.Send(t, callReq("up", fmt.Sprintf("/slow?ms=150&i=%d", i), "id", i))
	}
	for _, ch := range chans {
		wantOK(t, c.Wait(t, ch))
	}
	c.Ping(t)
	for i := range n {
		if got := c.Count(fmt.Sprint(i)); got != 1 {
			t.Errorf("answers to id %d: got %d, want 1", i, got)
		}
	}
	wantHits(t, u, "/slow", n)
	if got := u.MaxActive("/slow"); got > 2 {
		t.Errorf("calls in progress at once on one connection: got %d, want at most 2", got)
	}
}

// TestNonReadingClientDoesNotStall floods fender from a connection that
// never reads its answers; another connection is still served (SPEC 1, 7).
func TestNonReadingClientDoesNotStall(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})

	greedy, err := net.Dial("unix", f.Socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { greedy.Close() })
	const n = 40 // 40 answers of 64 KiB: far more than the socket buffers hold
	go func() {
		for i := range n {
			line := fmt.Sprintf(`{"id":%d,"upstream":"up","path":"/big?n=65536&i=%d","cache":"bypass"}`+"\n", i, i)
			if _, err := greedy.Write([]byte(line)); err != nil {
				return
			}
		}
	}()
	u.WaitHits(t, "/big", n, 10*time.Second)

	c := f.Dial(t)
	for i := range 20 {
		ch := c.Send(t, Req{"op": "ping"})
		r := c.WaitFor(t, ch, 3*time.Second)
		if !r.OK {
			t.Fatalf("ping %d: got %s, want ok", i, r.Raw)
		}
	}
	r := c.Call(t, callReq("up", "/ok"))
	wantOK(t, r)
}
