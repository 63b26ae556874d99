package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// callTimeout bounds the wait for any single answer.
const callTimeout = 20 * time.Second

// Req is one request; it goes on the wire as a JSON object on one line.
type Req map[string]any

// callReq is a call to upstream at path with the cache bypassed, so that
// every call reaches the upstream and attempts can be counted; kv adds
// fields in pairs: callReq("up", "/ok", "retries", 0).
func callReq(upstream, path string, kv ...any) Req {
	r := Req{"upstream": upstream, "path": path, "cache": "bypass"}
	for i := 0; i+1 < len(kv); i += 2 {
		r[kv[i].(string)] = kv[i+1]
	}
	return r
}

// Resp is one answer line.
type Resp struct {
	Raw       string                    `json:"-"`
	ID        json.RawMessage           `json:"id"`
	OK        bool                      `json:"ok"`
	Status    json.RawMessage           `json:"status"`
	Headers   map[string]any            `json:"headers"`
	Body      json.RawMessage           `json:"body"`
	Error     *RespError                `json:"error"`
	Meta      *Meta                     `json:"meta"`
	Upstreams map[string]HealthUpstream `json:"upstreams"`
	DecodeErr error                     `json:"-"`
}

// RespError is the error object of a failed answer.
type RespError struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

// Meta is the meta object of an answer to a call.
type Meta struct {
	Upstream  string  `json:"upstream"`
	Model     string  `json:"model"`
	Attempts  int     `json:"attempts"`
	Cached    bool    `json:"cached"`
	Stale     bool    `json:"stale"`
	Coalesced bool    `json:"coalesced"`
	Fallback  string  `json:"fallback"`
	Breaker   string  `json:"breaker"`
	LatencyMS float64 `json:"latency_ms"`
}

// HealthUpstream is one upstream in a health answer.
type HealthUpstream struct {
	URL      string            `json:"url"`
	Breakers map[string]string `json:"breakers"`
}

func parseResp(line []byte) Resp {
	r := Resp{Raw: strings.TrimRight(string(line), "\r\n")}
	if err := json.Unmarshal(line, &r); err != nil {
		r.DecodeErr = err
		// Route by id even when another field has an unexpected type.
		var idOnly struct {
			ID json.RawMessage `json:"id"`
		}
		_ = json.Unmarshal(line, &idOnly)
		r.ID = idOnly.ID
	}
	return r
}

// Code is the error code, "" on success.
func (r Resp) Code() string {
	if r.Error == nil {
		return ""
	}
	return r.Error.Code
}

// StatusCode is the numeric status of a call answer, -1 when absent.
func (r Resp) StatusCode() int {
	var n int
	if len(r.Status) == 0 || json.Unmarshal(r.Status, &n) != nil {
		return -1
	}
	return n
}

// StatusText is the string status of a health answer.
func (r Resp) StatusText() string {
	var s string
	_ = json.Unmarshal(r.Status, &s)
	return s
}

// Header looks up a response header case-insensitively; a list value gives
// its first element.
func (r Resp) Header(name string) (string, bool) {
	for k, v := range r.Headers {
		if !strings.EqualFold(k, name) {
			continue
		}
		switch v := v.(type) {
		case string:
			return v, true
		case []any:
			if len(v) > 0 {
				s, _ := v[0].(string)
				return s, true
			}
		}
		return fmt.Sprint(v), true
	}
	return "", false
}

// Attempts is meta.attempts, -1 without meta.
func (r Resp) Attempts() int {
	if r.Meta == nil {
		return -1
	}
	return r.Meta.Attempts
}

// Breaker is meta.breaker, "" without meta.
func (r Resp) Breaker() string {
	if r.Meta == nil {
		return ""
	}
	return r.Meta.Breaker
}

// idKey is the canonical text of an id: its compact JSON ("7" and "\"7\""
// differ), "" when the answer has no id at all.
func idKey(raw []byte) string {
	if len(raw) == 0 {
		return ""
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// Client is one connection to fender. A reader goroutine routes each answer
// to the request waiting for its id; answers nobody waits for (id null, a
// duplicate, a request written raw) queue up for Next.
type Client struct {
	conn  net.Conn
	wmu   sync.Mutex
	ids   atomic.Int64
	done  chan struct{}
	queue chan Resp

	mu      sync.Mutex
	waiters map[string]chan Resp
	counts  map[string]int
	total   int
	readErr error
}

// Dial connects to sock; the connection is closed when the test ends.
func Dial(t testing.TB, sock string) *Client {
	t.Helper()
	c, err := dialClient(sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(c.Close)
	return c
}

func dialClient(sock string) (*Client, error) {
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &Client{
		conn:    conn,
		done:    make(chan struct{}),
		queue:   make(chan Resp, 4096),
		waiters: make(map[string]chan Resp),
		counts:  make(map[string]int),
	}
	go c.readLoop()
	return c, nil
}

// Close closes the connection and waits for the reader.
func (c *Client) Close() {
	_ = c.conn.Close()
	<-c.done
}

func (c *Client) readLoop() {
	defer close(c.done)
	br := bufio.NewReaderSize(c.conn, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			c.dispatch(line)
		}
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
	}
}

func (c *Client) dispatch(line []byte) {
	r := parseResp(line)
	key := idKey(r.ID)
	c.mu.Lock()
	c.counts[key]++
	c.total++
	ch, ok := c.waiters[key]
	delete(c.waiters, key)
	c.mu.Unlock()
	if ok {
		ch <- r
		return
	}
	select {
	case c.queue <- r:
	default: // a test that floods unmatched answers does not read them
	}
}

// Expect registers interest in the next answer whose id is key (compact
// JSON, e.g. `7` or `"r1"`). Call it before writing the request.
func (c *Client) Expect(key string) <-chan Resp {
	ch := make(chan Resp, 1)
	c.mu.Lock()
	c.waiters[key] = ch
	c.mu.Unlock()
	return ch
}

// WriteRaw writes s as is; include the line ending.
func (c *Client) WriteRaw(t testing.TB, s string) {
	t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(callTimeout))
	if _, err := c.conn.Write([]byte(s)); err != nil {
		t.Fatalf("write request: %v", err)
	}
}

// Send writes req (with a fresh string id when it has none) and returns the
// channel its answer arrives on.
func (c *Client) Send(t testing.TB, req Req) <-chan Resp {
	t.Helper()
	if _, ok := req["id"]; !ok {
		req["id"] = fmt.Sprintf("auto-%d", c.ids.Add(1))
	}
	line, err := json.Marshal(req)
	if err != nil {
		t.Fatalf("marshal request: %v", err)
	}
	id, _ := json.Marshal(req["id"])
	ch := c.Expect(idKey(id))
	c.WriteRaw(t, string(line)+"\n")
	return ch
}

// Call sends req and waits for its answer.
func (c *Client) Call(t testing.TB, req Req) Resp {
	t.Helper()
	return c.Wait(t, c.Send(t, req))
}

// Wait waits for an answer on ch.
func (c *Client) Wait(t testing.TB, ch <-chan Resp) Resp {
	t.Helper()
	return c.WaitFor(t, ch, callTimeout)
}

// WaitFor waits at most d for an answer on ch.
func (c *Client) WaitFor(t testing.TB, ch <-chan Resp, d time.Duration) Resp {
	t.Helper()
	select {
	case r := <-ch:
		if r.DecodeErr != nil {
			t.Errorf("answer %s: %v", r.Raw, r.DecodeErr)
		}
		return r
	case <-time.After(d):
		t.Fatalf("no answer within %v (%s); unmatched answers: %v", d, c.state(), c.drainQueue())
		return Resp{}
	}
}

// Next is the next answer that no Expect claimed.
func (c *Client) Next(t testing.TB) Resp {
	t.Helper()
	select {
	case r := <-c.queue:
		return r
	case <-time.After(callTimeout):
		t.Fatalf("no answer within %v (%s)", callTimeout, c.state())
		return Resp{}
	}
}

// Ping sends a ping and checks it is answered ok.
func (c *Client) Ping(t testing.TB) {
	t.Helper()
	r := c.Call(t, Req{"op": "ping"})
	if !r.OK {
		t.Fatalf("ping: got %s, want ok:true", r.Raw)
	}
}

// Count is how many answers carried the id key.
func (c *Client) Count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[key]
}

// Total is how many answer lines arrived.
func (c *Client) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Unmatched takes the answers waiting in the queue for Next.
func (c *Client) Unmatched() []string { return c.drainQueue() }

func (c *Client) drainQueue() []string {
	var out []string
	for {
		select {
		case r := <-c.queue:
			out = append(out, r.Raw)
		default:
			return out
		}
	}
}

func (c *Client) state() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr != nil {
		return fmt.Sprintf("connection read error: %v", c.readErr)
	}
	return "connection open"
}
