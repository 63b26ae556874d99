// Package h1 is fender's HTTP/1.1 client for plaintext upstreams: one
// request at a time per connection, written and read on the calling
// goroutine, over a pool of keep-alive connections.
//
// net/http's client runs two goroutines per connection and hands every
// request and response between them and the caller; on a small machine each
// handoff can cost a thread wake-up, and profiles of fender put those
// handoffs and their stacks at a third of a pass-through call's CPU. Here
// the caller writes the request and reads the answer itself, so a call costs
// the system calls it needs and one wake-up when the answer arrives.
//
// What it does, as net/http does it: Content-Length, chunked and
// close-delimited bodies; 1xx answers skipped; no body for HEAD, 204 and
// 304; keep-alive unless either side says close or the answer is HTTP/1.0;
// a bound on the answer's header bytes; Basic auth from the URL's userinfo;
// the same request target (path escaping included) and default User-Agent.
// What it leaves out: TLS, HTTP/2, proxies, redirects (never followed), and
// transparent gzip (no Accept-Encoding is added, so answers come as the
// upstream sends them).
//
// Cancelling the context passed to Do ends the exchange at once, in any
// read or write, with the context already done when the error is returned.
package h1

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Client sends requests to one upstream (scheme http) and pools its
// connections. Safe for concurrent use.
type Client struct {
	addr   string // host:port to dial
	host   string // the Host header
	prefix string // the URL's path, escaped, no trailing "/"
	base   string // scheme://host/prefix, for targets that need url.Parse
	auth   string // "Basic ..." from the URL's userinfo, or ""

	dialer         net.Dialer
	maxIdle        int
	idleTimeout    time.Duration
	maxHeaderBytes int64

	mu     sync.Mutex
	idle   []*conn // most recently used last
	closed bool
	gen    int         // CloseIdle's count: connections dialled before the last one are not pooled
	sweep  *time.Timer // closes connections idle past idleTimeout
}

// Options configure a Client; zero values take the defaults.
type Options struct {
	MaxIdle        int           // idle connections kept (default 100)
	IdleTimeout    time.Duration // an idle connection is closed after this (default 90s)
	MaxHeaderBytes int64         // bound on an answer's status line and headers (default 1 MiB)
	DialTimeout    time.Duration // bound on connecting, within the request's context (default 30s)
}

// New returns a Client for u, an http URL with a host and no query.
func New(u *url.URL, o Options) (*Client, error) {
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("h1: need an http URL with a host, got %q", u.Redacted())
	}
	if o.MaxIdle <= 0 {
		o.MaxIdle = 100
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 90 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 1 << 20
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 30 * time.Second
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	c := &Client{
		addr:           net.JoinHostPort(u.Hostname(), port),
		host:           u.Host,
		prefix:         strings.TrimRight(u.EscapedPath(), "/"),
		dialer:         net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second},
		maxIdle:        o.MaxIdle,
		idleTimeout:    o.IdleTimeout,
		maxHeaderBytes: o.MaxHeaderBytes,
	}
	b := *u
	b.User = nil
	c.base = strings.TrimRight(b.String(), "/")
	if u.User != nil {
		pw, _ := u.User.Password()
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pw))
	}
	return c, nil
}

// Request is one request: Path is the path and query ("/v1/chat?x=1"),
// appended to the URL's path; Body nil means none.
type Request struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// RequestError is a request that cannot be sent as given (a bad target or
// header); nothing was sent.
type RequestError struct{ Err error }

func (e *RequestError) Error() string { return "h1: " + e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

// Do sends r and returns the answer with its headers read. The caller must
// close the body; a body read to its end gives the connection back to the
// pool. The body's reads stay bound to ctx.
func (c *Client) Do(ctx context.Context, r *Request) (*http.Response, error) {
	target, err := c.target(r.Path)
	if err != nil {
		return nil, &RequestError{err}
	}
	if err := checkHeader(r.Header); err != nil {
		return nil, &RequestError{err}
	}
	if ctx.Err() != nil {
		return nil, ctxErr(ctx)
	}
	cn, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	// The exchange is bound to ctx: when it ends, every read and write on
	// the connection fails at once. Only a connection whose watch was
	// stopped before it fired is used again.
	cn.state.Store(busy)
	cn.stop = context.AfterFunc(ctx, cn.interrupt)
	if err := cn.writeRequest(c, r, target); err != nil {
		cn.fail()
		return nil, wrapErr(ctx, err)
	}
	resp, err := cn.readResponse(ctx, r.Method)
	if err != nil {
		cn.fail()
		return nil, wrapErr(ctx, err)
	}
	return resp, nil
}

// wrapErr prefers the context's end, when it is what broke the exchange.
func wrapErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctxErr(ctx), err)
	}
	return err
}

// ctxErr is the end of a done context: its cause, which also matches
// ctx.Err() with errors.Is.
func ctxErr(ctx context.Context) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if errors.Is(cause, err) {
		return cause
	}
	return fmt.Errorf("%w (%w)", cause, err)
}

// CloseIdle closes the idle connections and, once they finish, the busy
// ones; the Client stays usable (new connections are dialled).
func (c *Client) CloseIdle() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.gen++
	c.mu.Unlock()
	for _, cn := range idle {
		cn.nc.Close()
	}
}

// Close closes every idle connection and each busy one when its exchange
// ends; Do keeps working but pools nothing more.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	if c.sweep != nil {
		c.sweep.Stop()
	}
	c.mu.Unlock()
	c.CloseIdle()
}

// Idle returns the number of idle pooled connections.
func (c *Client) Idle() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idle)
}

// checkAfter is how long a connection may sit idle before it is checked
// with a non-blocking peek, before reuse, for a close by the upstream (the
// peek is a system call, about 6% of a call's cost here, so a connection
// reused at once is not checked). Servers close idle keep-alive
// connections after seconds, not a millisecond; a close that races the
// request still fails it as a network error, which the caller's retry
// policy handles.
const checkAfter = time.Millisecond

// get returns a pooled connection that still looks open, or dials one.
func (c *Client) get(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		n := len(c.idle)
		if n == 0 {
			c.mu.Unlock()
			break
		}
		cn := c.idle[n-1]
		c.idle[n-1] = nil
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		// Bytes waiting on an idle connection are more than its last
		// answer said; the connection cannot be trusted.
		idle := time.Since(cn.idleAt)
		if cn.br.Buffered() == 0 && (idle < checkAfter || idle < c.idleTimeout && cn.open()) {
			return cn, nil
		}
		cn.nc.Close()
	}
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	nc, err := c.dialer.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	cn := &conn{c: c, nc: nc, gen: gen}
	if sc, ok := nc.(syscall.Conn); ok {
		cn.raw, _ = sc.SyscallConn()
	}
	cn.lr = io.LimitedReader{R: nc}
	cn.br = bufio.NewReaderSize(&cn.lr, bufSize)
	cn.bw = bufio.NewWriterSize(nc, bufSize)
	cn.tp = textproto.NewReader(cn.br)
	return cn, nil
}

// put pools cn, or closes it when the pool is full or closed.
func (c *Client) put(cn *conn) {
	cn.idleAt = time.Now()
	c.mu.Lock()
	if c.closed || cn.gen != c.gen || len(c.idle) >= c.maxIdle {
		c.mu.Unlock()
		cn.nc.Close()
		return
	}
	c.idle = append(c.idle, cn)
	if c.sweep == nil {
		c.sweep = time.AfterFunc(c.idleTimeout, c.sweepIdle)
	}
	c.mu.Unlock()
}

// sweepIdle closes the connections idle past idleTimeout (the oldest are
// first in the list) and runs again while any stay.
func (c *Client) sweepIdle() {
	now := time.Now()
	c.mu.Lock()
	k := 0
	for k < len(c.idle) && now.Sub(c.idle[k].idleAt) >= c.idleTimeout {
		k++
	}
	old := slices.Clone(c.idle[:k])
	c.idle = slices.Delete(c.idle, 0, k)
	if len(c.idle) > 0 && !c.closed {
		c.sweep.Reset(c.idleTimeout - now.Sub(c.idle[0].idleAt))
	} else {
		c.sweep = nil
	}
	c.mu.Unlock()
	for _, cn := range old {
		cn.nc.Close()
	}
}

const bufSize = 4 << 10

// conn is one upstream connection; it is used by one exchange at a time.
type conn struct {
	c          *Client
	nc         net.Conn
	raw        syscall.RawConn
	lr         io.LimitedReader // under br: bounds the header bytes
	br         *bufio.Reader
	bw         *bufio.Writer
	tp         *textproto.Reader
	idleAt     time.Time
	gen        int         // the Client's gen when dialled
	stop       func() bool // stops the context watch of the exchange
	state      atomic.Int32
	reuse      bool     // the answer allows another exchange
	closeAfter bool     // the request asked to close the connection
	num        [20]byte // for formatting Content-Length
}

// States of an exchange on a conn.
const (
	busy     = iota
	released // back in the pool
	failed   // closed
)

// interrupt makes the exchange's pending and future reads and writes fail;
// it runs when the exchange's context ends.
func (cn *conn) interrupt() { cn.nc.SetDeadline(time.Unix(1, 0)) }

// open peeks at the idle connection without blocking: no data and no EOF
// pending means the upstream has not closed it.
func (cn *conn) open() bool {
	if cn.raw == nil {
		return true
	}
	ok := false
	var b [1]byte
	err := cn.raw.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = err == unix.EAGAIN
		return true
	})
	return err == nil && ok
}

// done ends the exchange: a clean end of a reusable answer pools the
// connection; anything else closes it. The first call wins.
func (cn *conn) done(clean bool) {
	if clean && cn.reuse && cn.stop() {
		if cn.state.CompareAndSwap(busy, released) {
			cn.c.put(cn)
		}
		return
	}
	cn.fail()
}

func (cn *conn) fail() {
	if cn.state.CompareAndSwap(busy, failed) {
		if cn.stop != nil {
			cn.stop()
		}
		cn.nc.Close()
	}
}

// ownHeaders are written by the client from the request itself; the same
// keys in Request.Header are not sent (a second Content-Length would make
// the request ambiguous).
var ownHeaders = map[string]bool{"Host": true, "Content-Length": true, "Transfer-Encoding": true}

func (cn *conn) writeRequest(c *Client, r *Request, target string) error {
	// A request that says close leaves the connection closed after it.
	cn.closeAfter = hasToken(r.Header["Connection"], "close")
	w := cn.bw
	w.WriteString(r.Method)
	w.WriteByte(' ')
	w.WriteString(target)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(c.host)
	w.WriteString("\r\n")
	if _, ok := r.Header["User-Agent"]; !ok {
		w.WriteString("User-Agent: Go-http-client/1.1\r\n")
	}
	if len(r.Body) > 0 || r.Method == "POST" || r.Method == "PUT" || r.Method == "PATCH" {
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(cn.num[:0], int64(len(r.Body)), 10))
		w.WriteString("\r\n")
	}
	if _, ok := r.Header["Authorization"]; !ok && c.auth != "" {
		w.WriteString("Authorization: ")
		w.WriteString(c.auth)
		w.WriteString("\r\n")
	}
	// In sorted order, as net/http writes them.
	var keyBuf [16]string
	keys := keyBuf[:0]
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if ownHeaders[k] {
			continue
		}
		for _, v := range r.Header[k] {
			if v == "" && k == "User-Agent" {
				continue // as net/http: an empty User-Agent means none
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(textproto.TrimString(v))
			w.WriteString("\r\n")
		}
	}
	w.WriteString("\r\n")
	w.Write(r.Body)
	return w.Flush()
}
