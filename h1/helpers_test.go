package h1

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitLong bounds every wait on an event that must happen; it is a guard
// against hangs, never a timing assertion.
const waitLong = 5 * time.Second

// rawServer is a scripted HTTP/1.1 upstream on a loopback socket: its
// handler reads requests with http.ReadRequest and writes raw bytes chosen
// by the test, so framing can be tested byte for byte. It counts accepted
// connections and records every request it read, raw bytes included.
type rawServer struct {
	t       testing.TB
	ln      net.Listener
	addr    string
	accepts atomic.Int32
	handle  func(sc *srvConn)

	// eof receives the id of a connection whose next request read met
	// the end of the stream (or another read error): the client closed it.
	eof chan int

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
	reqs  []*capturedReq
}

// srvConn is one accepted connection of a rawServer.
type srvConn struct {
	s   *rawServer
	id  int // 1-based, in accept order
	nc  net.Conn
	br  *bufio.Reader
	rec *bytes.Buffer // raw bytes read from nc and not yet attributed
}

// capturedReq is one request as the upstream received it.
type capturedReq struct {
	conn int // the srvConn id
	req  *http.Request
	body []byte
	raw  []byte // request line, headers and body exactly as received
}

func newRawServer(t testing.TB, handle func(sc *srvConn)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{t: t, ln: ln, addr: ln.Addr().String(), handle: handle, eof: make(chan int, 1000)}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.close)
	return s
}

func (s *rawServer) serve() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		id := int(s.accepts.Add(1))
		s.mu.Lock()
		s.conns = append(s.conns, nc)
		s.mu.Unlock()
		rec := new(bytes.Buffer)
		sc := &srvConn{s: s, id: id, nc: nc, rec: rec}
		sc.br = bufio.NewReader(io.TeeReader(nc, rec))
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer nc.Close()
			s.handle(sc)
		}()
	}
}

func (s *rawServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *rawServer) url() string { return "http://" + s.addr + "/" }

// dials is the number of connections accepted so far.
func (s *rawServer) dials() int { return int(s.accepts.Load()) }

func (s *rawServer) requests() []*capturedReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*capturedReq(nil), s.reqs...)
}

func (s *rawServer) lastRequest(t testing.TB) *capturedReq {
	t.Helper()
	rs := s.requests()
	if len(rs) == 0 {
		t.Fatal("the upstream received no request")
	}
	return rs[len(rs)-1]
}

// waitEOF waits for the client to close connection id (or any connection
// when id is 0) and fails the test if it does not within waitLong.
func (s *rawServer) waitEOF(t testing.TB, id int) {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case got := <-s.eof:
			if id == 0 || got == id {
				return
			}
		case <-deadline:
			t.Fatalf("the upstream never saw connection %d closed by the client", id)
		}
	}
}

// next reads one request and its body; an error means the client closed
// the connection (or sent garbage).
func (sc *srvConn) next() (*capturedReq, error) {
	req, err := http.ReadRequest(sc.br)
	if err != nil {
		sc.ended()
		return nil, err
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		sc.ended()
		return nil, err
	}
	// The client sends one request and waits for the answer, so every
	// byte read so far, less what bufio holds ahead, is this request.
	all := sc.rec.Bytes()
	n := len(all) - sc.br.Buffered()
	cr := &capturedReq{conn: sc.id, req: req, body: body, raw: bytes.Clone(all[:n])}
	rest := bytes.Clone(all[n:])
	sc.rec.Reset()
	sc.rec.Write(rest)
	sc.s.mu.Lock()
	sc.s.reqs = append(sc.s.reqs, cr)
	sc.s.mu.Unlock()
	return cr, nil
}

func (sc *srvConn) write(s string) error {
	_, err := io.WriteString(sc.nc, s)
	return err
}

// hang blocks until the client closes the connection (or the test ends).
func (sc *srvConn) hang() {
	io.Copy(io.Discard, sc.br)
	sc.ended()
}

func (sc *srvConn) ended() {
	select {
	case sc.s.eof <- sc.id:
	default:
	}
}

// serveEach answers every request on every connection with f's raw bytes,
// closing the connection after the answer when f says so.
func serveEach(f func(sc *srvConn, r *capturedReq) (raw string, closeConn bool)) func(sc *srvConn) {
	return func(sc *srvConn) {
		for {
			r, err := sc.next()
			if err != nil {
				return
			}
			raw, closeConn := f(sc, r)
			if err := sc.write(raw); err != nil || closeConn {
				return
			}
		}
	}
}

// serveRaw answers every request with the same raw bytes.
func serveRaw(raw string) func(sc *srvConn) {
	return serveEach(func(*srvConn, *capturedReq) (string, bool) { return raw, false })
}

// serveRawClose answers every request with raw and closes the connection.
func serveRawClose(raw string) func(sc *srvConn) {
	return serveEach(func(*srvConn, *capturedReq) (string, bool) { return raw, true })
}

func newClient(t testing.TB, rawURL string, o Options) *Client {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(u, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// do calls c.Do and turns a panic into a test error (and an error return),
// so that one crashing case does not take the whole test binary down.
func do(t testing.TB, ctx context.Context, c *Client, r *Request) (resp *http.Response, err error) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Errorf("Do(%s %s) panicked: %v\n%s", r.Method, r.Path, p, debug.Stack())
			resp, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	return c.Do(ctx, r)
}

// get does a GET under a context that ends only well after any exchange
// here should have (when the test ends at the latest): a hang turns into a
// failure instead of blocking the test binary.
func get(t testing.TB, c *Client, path string) (*http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	t.Cleanup(cancel)
	return do(t, ctx, c, &Request{Method: "GET", Path: path})
}

// mustGet does a GET, reads the whole body and returns it.
func mustGet(t testing.TB, c *Client, path string) (*http.Response, string) {
	t.Helper()
	resp, err := get(t, c, path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return resp, string(b)
}

// waitFor polls cond until it holds, failing the test after waitLong.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
