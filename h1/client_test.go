package h1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pastCheck is an idle time after which a pooled connection is peeked at
// before reuse.
const pastCheck = checkAfter + 50*time.Millisecond

func TestNew(t *testing.T) {
	for _, bad := range []string{"https://example.com/", "http:///path", "ftp://x/", "//host/", "/relative"} {
		u, err := url.Parse(bad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := New(u, Options{}); err == nil {
			t.Errorf("New(%q) succeeded", bad)
		}
	}
	u, _ := url.Parse("http://user:secret@example.com/")
	_, err := New(&url.URL{Scheme: "https", Host: "x", User: url.UserPassword("user", "secret")}, Options{})
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("New error %v must exist and not show the password", err)
	}
	c, err := New(u, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.addr != "example.com:80" || c.host != "example.com" || c.prefix != "" {
		t.Errorf("addr %q host %q prefix %q", c.addr, c.host, c.prefix)
	}
	if c.maxIdle != 100 || c.idleTimeout != 90*time.Second || c.maxHeaderBytes != 1<<20 || c.dialer.Timeout != 30*time.Second {
		t.Errorf("defaults: %d %v %d %v", c.maxIdle, c.idleTimeout, c.maxHeaderBytes, c.dialer.Timeout)
	}
	u, _ = url.Parse("http://[::1]:8080/a/b/")
	c2, err := New(u, Options{MaxIdle: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.addr != "[::1]:8080" || c2.host != "[::1]:8080" || c2.prefix != "/a/b" || c2.maxIdle != 3 {
		t.Errorf("addr %q host %q prefix %q maxIdle %d", c2.addr, c2.host, c2.prefix, c2.maxIdle)
	}
}

func TestReuseAfterBodyReadToEnd(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{})
	for i := range 5 {
		if _, body := mustGet(t, c, "/"+strconv.Itoa(i)); body != "ok" {
			t.Errorf("body = %q", body)
		}
	}
	if n := s.dials(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
	for _, r := range s.requests() {
		if r.conn != 1 {
			t.Errorf("request %s went on connection %d", r.req.RequestURI, r.conn)
		}
	}
}

func TestReuseWithoutExplicitClose(t *testing.T) {
	// io.ReadFull of exactly Content-Length bytes: the last Read already
	// reports the end, so no further Read or Close is needed.
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"))
	c := newClient(t, s.url(), Options{})
	for range 3 {
		resp, err := get(t, c, "/")
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "abcd" {
			t.Fatalf("ReadFull = %q, %v", buf, err)
		}
		if n := c.Idle(); n != 1 {
			t.Errorf("Idle() = %d, want 1", n)
		}
		// A Close after the end changes nothing.
		resp.Body.Close()
		if n := c.Idle(); n != 1 {
			t.Errorf("Idle() = %d after Close, want 1", n)
		}
	}
	if n := s.dials(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestBodyClosedEarlyDialsAgain(t *testing.T) {
	for _, read := range []int{0, 3} {
		t.Run(fmt.Sprintf("after %d bytes", read), func(t *testing.T) {
			s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"))
			c := newClient(t, s.url(), Options{})
			resp, err := get(t, c, "/")
			if err != nil {
				t.Fatal(err)
			}
			if read > 0 {
				if _, err := io.ReadFull(resp.Body, make([]byte, read)); err != nil {
					t.Fatal(err)
				}
			}
			resp.Body.Close()
			s.waitEOF(t, 1)
			if n := c.Idle(); n != 0 {
				t.Errorf("Idle() = %d, want 0", n)
			}
			if _, body := mustGet(t, c, "/"); body != "0123456789" {
				t.Errorf("body = %q", body)
			}
			if n := s.dials(); n != 2 {
				t.Errorf("dials = %d, want 2", n)
			}
		})
	}
}

// net/http answers a Read after Close with an error
// (http: read on closed response body); so should a body here, rather
// than go on handing out bytes of a connection it has given up.
func TestReadAfterCloseFails(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"))
	c := newClient(t, s.url(), Options{})
	resp, err := get(t, c, "/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	s.waitEOF(t, 1)
	b, err := io.ReadAll(resp.Body)
	if len(b) != 0 || err == nil {
		t.Errorf("after Close, the body read %q with error %v; want no bytes and an error", b, err)
	}
}

func TestAnswerPreventsReuse(t *testing.T) {
	tests := []struct{ name, raw string }{
		{"Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
		{"Connection: keep-alive, Close", "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok"},
		{"Connection: close, chunked", "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
		{"Connection: close, no body", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{"HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The upstream keeps the connection open: the client is the
			// one that must not use it again.
			s := newRawServer(t, serveRaw(tt.raw))
			c := newClient(t, s.url(), Options{})
			for i := range 2 {
				if _, body := mustGet(t, c, "/"); body != "ok" && !strings.Contains(tt.name, "no body") {
					t.Errorf("body = %q", body)
				}
				if n := c.Idle(); n != 0 {
					t.Errorf("exchange %d: Idle() = %d, want 0", i, n)
				}
			}
			s.waitEOF(t, 1)
			if n := s.dials(); n != 2 {
				t.Errorf("dials = %d, want 2", n)
			}
		})
	}
}

// The package documents keep-alive "unless either side says close"; net/http
// does not reuse a connection after a request with Connection: close.
func TestRequestConnectionClosePreventsReuse(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{})
	for i := range 2 {
		resp, err := do(t, context.Background(), c, &Request{Method: "GET", Path: "/", Header: http.Header{"Connection": {"close"}}})
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		if n := c.Idle(); n != 0 {
			t.Errorf("exchange %d: Idle() = %d after a request that said Connection: close, want 0", i, n)
		}
	}
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

func TestLeftoverBytesPreventReuse(t *testing.T) {
	tests := []struct{ name, raw string }{
		{"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nEXTRA"},
		{"no body", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nEXTRA"},
		{"a second answer", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwrong"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveRaw(tt.raw))
			c := newClient(t, s.url(), Options{})
			for range 2 {
				resp, err := get(t, c, "/")
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if want := "ok"; tt.name == "no body" && len(b) != 0 || tt.name != "no body" && string(b) != want {
					t.Errorf("body = %q", b)
				}
			}
			if n := s.dials(); n != 2 {
				t.Errorf("dials = %d, want 2: bytes past the answer make the connection untrustworthy", n)
			}
		})
	}
}

func TestLateLeftoverBytesPreventReuse(t *testing.T) {
	t.Parallel()
	junkSent := make(chan struct{})
	s := newRawServer(t, func(sc *srvConn) {
		for i := 0; ; i++ {
			if _, err := sc.next(); err != nil {
				return
			}
			if sc.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") != nil {
				return
			}
			if sc.id == 1 && i == 0 {
				// After the answer, bytes it did not announce.
				time.Sleep(20 * time.Millisecond)
				sc.write("JUNK")
				close(junkSent)
			}
		}
	})
	c := newClient(t, s.url(), Options{})
	mustGet(t, c, "/")
	<-junkSent
	time.Sleep(pastCheck) // the connection is peeked at before reuse
	if _, body := mustGet(t, c, "/"); body != "ok" {
		t.Errorf("body = %q", body)
	}
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
	s.waitEOF(t, 1)
}

func TestIdleConnectionClosedByUpstream(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, raw string }{
		{"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The upstream closes each connection after one answer,
			// without saying so.
			s := newRawServer(t, serveRawClose(tt.raw))
			c := newClient(t, s.url(), Options{})
			for i := range 3 {
				if i > 0 {
					// Idle long enough to be peeked at: the close is seen
					// and a new connection dialled.
					time.Sleep(pastCheck)
				}
				if _, body := mustGet(t, c, "/"); body != "ok" {
					t.Errorf("body = %q", body)
				}
				if n := c.Idle(); n != 1 {
					t.Fatalf("Idle() = %d, want 1", n)
				}
			}
			if n := s.dials(); n != 3 {
				t.Errorf("dials = %d, want 3", n)
			}
		})
	}
}

func TestIdleTimeoutClosesConnections(t *testing.T) {
	t.Parallel()
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{IdleTimeout: 60 * time.Millisecond})
	mustGet(t, c, "/")
	s.waitEOF(t, 1)
	waitFor(t, "Idle() == 0", func() bool { return c.Idle() == 0 })
	// The sweep runs again for later connections.
	mustGet(t, c, "/")
	s.waitEOF(t, 2)
	waitFor(t, "Idle() == 0", func() bool { return c.Idle() == 0 })
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

// connIDServer answers each request with the id of its connection; the
// first request on each of the first `hold` connections is answered only
// once all of them have arrived, so that the client must open them all.
func connIDServer(t *testing.T, hold int) *rawServer {
	var arrived atomic.Int32
	all := make(chan struct{})
	return newRawServer(t, func(sc *srvConn) {
		first := true
		for {
			if _, err := sc.next(); err != nil {
				return
			}
			if first && sc.id <= hold {
				if int(arrived.Add(1)) == hold {
					close(all)
				}
				select {
				case <-all:
				case <-time.After(waitLong):
					return
				}
			}
			first = false
			id := strconv.Itoa(sc.id)
			if sc.write("HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(id))+"\r\n\r\n"+id) != nil {
				return
			}
		}
	})
}

// parallelGets makes n requests at once and returns their answers, bodies
// unread.
func parallelGets(t *testing.T, c *Client, n int) []*http.Response {
	resps := make([]*http.Response, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { resps[i], errs[i] = get(t, c, "/") })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return resps
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPoolIsLIFO(t *testing.T) {
	s := connIDServer(t, 2)
	c := newClient(t, s.url(), Options{})
	resps := parallelGets(t, c, 2)
	first := readBody(t, resps[0])  // pooled first
	second := readBody(t, resps[1]) // pooled last: used first
	if first == second {
		t.Fatalf("both answers came on connection %s", first)
	}
	if n := c.Idle(); n != 2 {
		t.Fatalf("Idle() = %d, want 2", n)
	}
	r3, err := get(t, c, "/")
	if err != nil {
		t.Fatal(err)
	}
	r4, err := get(t, c, "/")
	if err != nil {
		t.Fatal(err)
	}
	if got := readBody(t, r3); got != second {
		t.Errorf("third request on connection %s, want %s (most recently pooled)", got, second)
	}
	if got := readBody(t, r4); got != first {
		t.Errorf("fourth request on connection %s, want %s", got, first)
	}
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

func TestPoolBound(t *testing.T) {
	s := connIDServer(t, 5)
	c := newClient(t, s.url(), Options{MaxIdle: 2})
	resps := parallelGets(t, c, 5)
	for _, r := range resps {
		readBody(t, r)
	}
	if n := s.dials(); n != 5 {
		t.Fatalf("dials = %d, want 5", n)
	}
	if n := c.Idle(); n != 2 {
		t.Errorf("Idle() = %d, want 2 (MaxIdle)", n)
	}
	// The three that did not fit are closed.
	for range 3 {
		s.waitEOF(t, 0)
	}
	for range 4 {
		mustGet(t, c, "/")
	}
	if n := s.dials(); n != 5 {
		t.Errorf("dials = %d after more requests, want 5", n)
	}
}

func TestCloseIdle(t *testing.T) {
	s := connIDServer(t, 2)
	c := newClient(t, s.url(), Options{})
	for _, r := range parallelGets(t, c, 2) {
		readBody(t, r)
	}
	if n := c.Idle(); n != 2 {
		t.Fatalf("Idle() = %d, want 2", n)
	}
	c.CloseIdle()
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d after CloseIdle, want 0", n)
	}
	s.waitEOF(t, 0)
	s.waitEOF(t, 0)
	// Still usable, and pooling.
	if _, body := mustGet(t, c, "/"); body != "3" {
		t.Errorf("answer from connection %q, want a new one (3)", body)
	}
	if n := c.Idle(); n != 1 {
		t.Errorf("Idle() = %d, want 1", n)
	}
	mustGet(t, c, "/")
	if n := s.dials(); n != 3 {
		t.Errorf("dials = %d, want 3", n)
	}
}

// CloseIdle is documented to close "the idle connections and, once they
// finish, the busy ones".
func TestCloseIdleClosesBusyConnectionsWhenDone(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{})
	resp, err := get(t, c, "/")
	if err != nil {
		t.Fatal(err)
	}
	c.CloseIdle() // the connection is busy
	if body := readBody(t, resp); body != "ok" {
		t.Errorf("body = %q", body)
	}
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d: the connection busy during CloseIdle was pooled when its exchange ended, want it closed", n)
	}
}

func TestClose(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{})
	mustGet(t, c, "/")
	busy, err := get(t, c, "/") // on connection 1, body unread
	if err != nil {
		t.Fatal(err)
	}
	idleResp := parallelGets(t, c, 1) // connection 2
	readBody(t, idleResp[0])
	if n := c.Idle(); n != 1 {
		t.Fatalf("Idle() = %d, want 1", n)
	}
	c.Close()
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d after Close, want 0", n)
	}
	s.waitEOF(t, 2)
	// The busy exchange finishes normally, then its connection is closed.
	if body := readBody(t, busy); body != "ok" {
		t.Errorf("body = %q", body)
	}
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d after a busy exchange ended past Close, want 0", n)
	}
	s.waitEOF(t, 1)
	// Do keeps working but pools nothing.
	for range 2 {
		if _, body := mustGet(t, c, "/"); body != "ok" {
			t.Errorf("body = %q", body)
		}
		if n := c.Idle(); n != 0 {
			t.Errorf("Idle() = %d after Close, want 0", n)
		}
	}
	if n := s.dials(); n != 4 {
		t.Errorf("dials = %d, want 4", n)
	}
	c.Close() // twice is fine
	c.CloseIdle()
}

func TestCloseIdleEmptyAndSweepAfterClose(t *testing.T) {
	t.Parallel()
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{IdleTimeout: 50 * time.Millisecond})
	c.CloseIdle()
	mustGet(t, c, "/")
	c.Close()
	// The sweep timer was stopped or finds nothing: no panic, nothing pooled.
	time.Sleep(100 * time.Millisecond)
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d", n)
	}
}

func TestCancelWhileWaitingForAnswer(t *testing.T) {
	got := make(chan struct{})
	s := newRawServer(t, func(sc *srvConn) {
		if sc.id == 1 {
			if _, err := sc.next(); err != nil {
				return
			}
			close(got)
			sc.hang()
			return
		}
		serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")(sc)
	})
	c := newClient(t, s.url(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-got
		cancel()
	}()
	var resp *http.Response
	var err error
	var ctxErr error
	within(t, "Do", func() {
		resp, err = do(t, ctx, c, &Request{Method: "GET", Path: "/"})
		ctxErr = ctx.Err()
	})
	if err == nil {
		resp.Body.Close()
		t.Fatal("Do succeeded")
	}
	if ctxErr == nil {
		t.Error("ctx.Err() == nil when Do returned")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want one wrapping context.Canceled", err)
	}
	s.waitEOF(t, 1)
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d", n)
	}
	if _, body := mustGet(t, c, "/"); body != "ok" {
		t.Errorf("body = %q", body)
	}
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

func TestCancelWhileWritingRequest(t *testing.T) {
	release := make(chan struct{})
	accepted := make(chan struct{})
	s := newRawServer(t, func(sc *srvConn) {
		// Reads nothing: the client's write blocks once the socket
		// buffers are full.
		close(accepted)
		<-release
	})
	t.Cleanup(func() { close(release) })
	c := newClient(t, s.url(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-accepted
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	body := make([]byte, 64<<20)
	var resp *http.Response
	var err error
	within(t, "Do", func() { resp, err = do(t, ctx, c, &Request{Method: "POST", Path: "/", Body: body}) })
	if err == nil {
		resp.Body.Close()
		t.Fatal("Do succeeded")
	}
	if !errors.Is(err, context.Canceled) || ctx.Err() == nil {
		t.Errorf("err = %v, ctx.Err() = %v; want context.Canceled", err, ctx.Err())
	}
}

func TestDeadlineWhileBodyTrickles(t *testing.T) {
	t.Parallel()
	s := newRawServer(t, func(sc *srvConn) {
		if sc.id > 1 {
			serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")(sc)
			return
		}
		if _, err := sc.next(); err != nil {
			return
		}
		if sc.write("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst") != nil {
			return
		}
		for range 1000 {
			time.Sleep(10 * time.Millisecond)
			if sc.write("x") != nil {
				sc.ended()
				return
			}
		}
	})
	c := newClient(t, s.url(), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	resp, err := do(t, ctx, c, &Request{Method: "GET", Path: "/"})
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	within(t, "Read", func() { b, err = io.ReadAll(resp.Body) })
	resp.Body.Close()
	if err == nil {
		t.Fatal("the body read to its end")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want one wrapping context.DeadlineExceeded", err)
	}
	if !strings.HasPrefix(string(b), "first") {
		t.Errorf("body so far = %q", b)
	}
	s.waitEOF(t, 1)
	if _, body := mustGet(t, c, "/"); body != "ok" {
		t.Errorf("body = %q", body)
	}
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

var errMine = errors.New("my cause")

// within runs f and fails the test if it has not returned after waitLong:
// a guard against a hang, not a timing assertion.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatalf("%s did not return after its context ended", what)
	}
}

func TestCancelCause(t *testing.T) {
	t.Run("waiting for the answer", func(t *testing.T) {
		got := make(chan struct{})
		s := newRawServer(t, func(sc *srvConn) {
			if _, err := sc.next(); err != nil {
				return
			}
			close(got)
			sc.hang()
		})
		c := newClient(t, s.url(), Options{})
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		go func() {
			<-got
			cancel(errMine)
		}()
		var resp *http.Response
		var err error
		within(t, "Do", func() { resp, err = do(t, ctx, c, &Request{Method: "GET", Path: "/"}) })
		if err == nil {
			resp.Body.Close()
			t.Fatal("Do succeeded")
		}
		if !errors.Is(err, errMine) {
			t.Errorf("err = %v, want one wrapping the cause", err)
		}
	})
	t.Run("reading the body", func(t *testing.T) {
		s := newRawServer(t, func(sc *srvConn) {
			if _, err := sc.next(); err != nil {
				return
			}
			sc.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
			sc.hang()
		})
		c := newClient(t, s.url(), Options{})
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		resp, err := do(t, ctx, c, &Request{Method: "GET", Path: "/"})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		cancel(errMine)
		within(t, "Read", func() { _, err = io.ReadAll(resp.Body) })
		resp.Body.Close()
		if !errors.Is(err, errMine) {
			t.Errorf("err = %v, want one wrapping the cause", err)
		}
		s.waitEOF(t, 1)
	})
}

func TestAlreadyCancelledContext(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if resp, err := do(t, ctx, c, &Request{Method: "GET", Path: "/"}); err == nil {
		resp.Body.Close()
		t.Fatal("Do succeeded")
	} else if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	if n := s.dials(); n != 0 {
		t.Errorf("dials = %d, want 0", n)
	}
}

// The cause of a context ended before Do is as visible as one ended during
// the exchange.
func TestAlreadyCancelledContextCause(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{})
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errMine)
	resp, err := do(t, ctx, c, &Request{Method: "GET", Path: "/"})
	if err == nil {
		resp.Body.Close()
		t.Fatal("Do succeeded")
	}
	if !errors.Is(err, errMine) {
		t.Errorf("err = %v (%T); errors.Is(err, cause) = false, want true as when the context ends during the exchange", err, err)
	}
}

func TestCancelAfterBodyReadKeepsConnection(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, s.url(), Options{})
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := do(t, ctx, c, &Request{Method: "GET", Path: "/"})
		if err != nil {
			t.Fatal(err)
		}
		if body := readBody(t, resp); body != "ok" {
			t.Errorf("body = %q", body)
		}
		// The exchange is over: ending its context must not touch the
		// pooled connection (no deadline left on it).
		cancel()
	}
	if n := s.dials(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestCancelBeforeBodyRead(t *testing.T) {
	s := newRawServer(t, func(sc *srvConn) {
		if _, err := sc.next(); err != nil {
			return
		}
		sc.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
		sc.hang()
	})
	c := newClient(t, s.url(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := do(t, ctx, c, &Request{Method: "GET", Path: "/"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	within(t, "Read", func() { _, err = io.ReadAll(resp.Body) })
	resp.Body.Close()
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want one wrapping context.Canceled", err)
	}
	s.waitEOF(t, 1)
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d", n)
	}
}

func TestDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newClient(t, "http://"+addr+"/", Options{})
	resp, err := get(t, c, "/")
	if err == nil {
		resp.Body.Close()
		t.Fatal("Do succeeded with nothing listening")
	}
	var rerr *RequestError
	if errors.As(err, &rerr) {
		t.Errorf("a dial error is a *RequestError: %v", err)
	}
}

func TestConcurrent(t *testing.T) {
	var conns atomic.Int32
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := strings.Repeat(r.URL.Path, 1+len(r.URL.Path)%7)
		if r.URL.Query().Get("chunked") != "" {
			io.WriteString(w, body[:len(body)/2])
			w.(http.Flusher).Flush()
			io.WriteString(w, body[len(body)/2:])
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	}))
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)
	const maxIdle = 8
	c := newClient(t, ts.URL, Options{MaxIdle: maxIdle})
	var wg sync.WaitGroup
	var failures atomic.Int32
	for g := range 50 {
		wg.Go(func() {
			for i := range 20 {
				path := fmt.Sprintf("/g%d/r%d", g, i)
				q := ""
				if i%3 == 0 {
					q = "?chunked=1"
				}
				resp, err := get(t, c, path+q)
				if err != nil {
					t.Errorf("%s: %v", path, err)
					failures.Add(1)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := strings.Repeat(path, 1+len(path)%7); err != nil || string(b) != want {
					t.Errorf("%s: body %q, %v; want %q", path, b, err, want)
					failures.Add(1)
					return
				}
				if n := c.Idle(); n > maxIdle {
					t.Errorf("Idle() = %d > MaxIdle %d", n, maxIdle)
				}
			}
		})
	}
	wg.Wait()
	if n := c.Idle(); n > maxIdle || n < 1 {
		t.Errorf("Idle() = %d, want 1..%d", n, maxIdle)
	}
	t.Logf("%d connections, %d idle", conns.Load(), c.Idle())
}

func TestHTTPTestServerBasics(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/status":
			w.WriteHeader(http.StatusTeapot)
			io.WriteString(w, "short and stout")
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Method", r.Method)
			w.Write(b)
		case "/big":
			for range 100 {
				io.WriteString(w, strings.Repeat("z", 1000))
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(ts.Close)
	c := newClient(t, ts.URL, Options{})
	resp, body := mustGet(t, c, "/status")
	if resp.StatusCode != http.StatusTeapot || body != "short and stout" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		resp, err := do(t, context.Background(), c, &Request{Method: m, Path: "/echo", Body: []byte("payload " + m)})
		if err != nil {
			t.Fatal(err)
		}
		if b := readBody(t, resp); b != "payload "+m || resp.Header.Get("X-Method") != m {
			t.Errorf("%s: %q %q", m, b, resp.Header.Get("X-Method"))
		}
	}
	resp, body = mustGet(t, c, "/big")
	if len(body) != 100000 || resp.ContentLength != -1 {
		t.Errorf("big: %d bytes, ContentLength %d", len(body), resp.ContentLength)
	}
	resp, err := do(t, context.Background(), c, &Request{Method: "HEAD", Path: "/status"})
	if err != nil || resp.Body != http.NoBody {
		t.Errorf("HEAD: %v %v", resp, err)
	}
	resp, body = mustGet(t, c, "/nothing")
	if resp.StatusCode != 404 || !strings.Contains(body, "not found") {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if n := c.Idle(); n != 1 {
		t.Errorf("Idle() = %d, want 1 (one connection for sequential requests)", n)
	}
}
