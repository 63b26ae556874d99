package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// streamWait bounds the wait for any stream line in these tests.
const streamWait = 20 * time.Second

// ---------------------------------------------------------------------------
// Wire formats of real streaming upstreams.

// openAIEvents is the data of the events of an OpenAI chat-completions stream
// that says words: a first event with the role, one per word, one with
// finish_reason "stop", then [DONE].
func openAIEvents(words ...string) []string {
	ev := []string{openAIChunk(`{"role":"assistant","content":""}`, "null")}
	for _, w := range words {
		c, _ := json.Marshal(w)
		ev = append(ev, openAIChunk(`{"content":`+string(c)+`}`, "null"))
	}
	ev = append(ev, openAIChunk(`{}`, `"stop"`))
	return append(ev, "[DONE]")
}

func openAIChunk(delta, finish string) string {
	return `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,` +
		`"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb",` +
		`"choices":[{"index":0,"delta":` + delta + `,"logprobs":null,"finish_reason":` + finish + `}]}`
}

// ollamaLines is an Ollama /api/generate stream that says words: one line
// per word with "done":false, then the last line with "done":true and the
// statistics.
func ollamaLines(words ...string) []string {
	var out []string
	for i, w := range words {
		r, _ := json.Marshal(w)
		out = append(out, fmt.Sprintf(`{"model":"phi3","created_at":"2024-05-01T10:00:00.%06dZ","response":%s,"done":false}`, i, r))
	}
	return append(out, `{"model":"phi3","created_at":"2024-05-01T10:00:01.000000Z","response":"","done":true,`+
		`"done_reason":"stop","context":[32010,29871,13,9707],"total_duration":5043500667,"load_duration":5025959,`+
		`"prompt_eval_count":26,"prompt_eval_duration":325953000,"eval_count":290,"eval_duration":4709213000}`)
}

// ---------------------------------------------------------------------------
// A fake streaming upstream.

// streamUpstream is a fake upstream whose handler serves every request after
// reading its body (so that net/http notices a client that goes away).
type streamUpstream struct {
	*httptest.Server
	quit chan struct{}
	hits atomic.Int64

	mu    sync.Mutex
	paths map[string]int
}

// upCall is one request to a streamUpstream.
type upCall struct {
	W http.ResponseWriter
	R *http.Request
	N int // 1-based number of this request among those to its path
	u *streamUpstream
}

func newStreamUpstream(t testing.TB, h func(c *upCall)) *streamUpstream {
	t.Helper()
	u := &streamUpstream{quit: make(chan struct{}), paths: map[string]int{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		u.hits.Add(1)
		u.mu.Lock()
		u.paths[r.URL.Path]++
		n := u.paths[r.URL.Path]
		u.mu.Unlock()
		h(&upCall{W: w, R: r, N: n, u: u})
	}))
	t.Cleanup(func() {
		close(u.quit)
		u.Server.CloseClientConnections()
		u.Server.Close()
	})
	return u
}

// Hits is how many requests reached the upstream.
func (u *streamUpstream) Hits() int { return int(u.hits.Load()) }

// PathHits is how many requests reached path.
func (u *streamUpstream) PathHits(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.paths[path]
}

// Pause waits d; false when the request ended or the test is over first.
func (c *upCall) Pause(d time.Duration) bool {
	if d <= 0 {
		return c.R.Context().Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-c.R.Context().Done():
		return false
	case <-c.u.quit:
		return false
	}
}

// Hang blocks until the request ends (true) or the test is over (false).
func (c *upCall) Hang() bool {
	select {
	case <-c.R.Context().Done():
		return true
	case <-c.u.quit:
		return false
	}
}

// Await blocks until gate is closed (true), the request ends, the test is
// over or streamWait passes.
func (c *upCall) Await(gate <-chan struct{}) bool {
	select {
	case <-gate:
		return true
	case <-c.R.Context().Done():
	case <-c.u.quit:
	case <-time.After(streamWait):
	}
	return false
}

// Flush sends what was written so far.
func (c *upCall) Flush() { _ = http.NewResponseController(c.W).Flush() }

// StartSSE sends the headers of a 200 event stream, as OpenAI does.
func (c *upCall) StartSSE() {
	h := c.W.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Request-Id", "req_stream_1")
	c.W.WriteHeader(http.StatusOK)
	c.Flush()
}

// Event sends one SSE event with data and flushes it.
func (c *upCall) Event(data string) {
	io.WriteString(c.W, "data: "+data+"\n\n")
	c.Flush()
}

// SSE sends a 200 event stream of the events, delay apart (none before the
// first); false when the request ended first.
func (c *upCall) SSE(events []string, delay time.Duration) bool {
	c.StartSSE()
	for i, e := range events {
		if i > 0 && !c.Pause(delay) {
			return false
		}
		c.Event(e)
	}
	return true
}

// NDJSON sends a 200 application/x-ndjson stream of the lines, delay apart,
// as Ollama does; false when the request ended first.
func (c *upCall) NDJSON(lines []string, delay time.Duration) bool {
	c.W.Header().Set("Content-Type", "application/x-ndjson")
	c.W.WriteHeader(http.StatusOK)
	c.Flush()
	for i, l := range lines {
		if i > 0 && !c.Pause(delay) {
			return false
		}
		io.WriteString(c.W, l+"\n")
		c.Flush()
	}
	return true
}

// Hijack takes over the connection (what was written is flushed first).
func (c *upCall) Hijack() net.Conn {
	conn, _, err := http.NewResponseController(c.W).Hijack()
	if err != nil {
		panic(fmt.Sprintf("hijack: %v", err))
	}
	return conn
}

// Reset closes the connection; with rst the close sends a TCP RST
// (SO_LINGER 0), else a FIN.
func (c *upCall) Reset(rst bool) {
	conn := c.Hijack()
	if tc, ok := conn.(*net.TCPConn); ok && rst {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

// ---------------------------------------------------------------------------
// A client that keeps every line of a stream.

// streamClient is one connection to fender that keeps, per id, the chunk
// lines of each stream in order with their arrival times, then its final
// answer.
type streamClient struct {
	conn  net.Conn
	wmu   sync.Mutex
	ids   atomic.Int64
	done  chan struct{}
	close sync.Once

	mu      sync.Mutex
	calls   map[string]*streamCall
	stray   []string
	readErr error
	changed chan struct{}
}

// streamCall is one request on a streamClient.
type streamCall struct {
	c    *streamClient
	key  string
	sent time.Time

	// guarded by c.mu
	chunks  []string
	chunkAt []time.Time
	final   string
	finalAt time.Time
	extra   []string
	bad     []string
}

// streamResult is what one call received so far.
type streamResult struct {
	Key        string
	Sent       time.Time
	Chunks     []string
	ChunkAt    []time.Time
	Done       bool
	Final      Resp      // the final line, when Done
	FinalAt    time.Time // its arrival
	HasBody    bool      // the final line has a body field
	MetaChunks int64     // meta.chunks, -1 when absent
	MetaBytes  int64     // meta.bytes, -1 when absent
	Extra      []string  // lines for this id after its final line
	Bad        []string  // lines for this id that are neither a chunk nor a final answer
}

// Elapsed is the time from sending the request to the final line.
func (r streamResult) Elapsed() time.Duration { return r.FinalAt.Sub(r.Sent) }

// Bytes is the total length of the chunks received.
func (r streamResult) Bytes() int64 {
	var n int64
	for _, c := range r.Chunks {
		n += int64(len(c))
	}
	return n
}

// String is a summary for failure messages.
func (r streamResult) String() string {
	chunks := r.Chunks
	more := ""
	if len(chunks) > 8 {
		chunks, more = chunks[:8], fmt.Sprintf(" ...(%d more)", len(r.Chunks)-8)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "id %s: %d chunks %q%s; ", r.Key, len(r.Chunks), chunks, more)
	if r.Done {
		fmt.Fprintf(&b, "final after %v: %s", r.Elapsed().Round(time.Millisecond), r.Final.Raw)
	} else {
		b.WriteString("no final line yet")
	}
	if len(r.Extra) > 0 {
		fmt.Fprintf(&b, "; lines after the final one: %q", r.Extra)
	}
	if len(r.Bad) > 0 {
		fmt.Fprintf(&b, "; undecodable lines: %q", r.Bad)
	}
	return b.String()
}

func dialStream(t testing.TB, sock string) *streamClient {
	t.Helper()
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	c := &streamClient{
		conn:    conn,
		done:    make(chan struct{}),
		calls:   map[string]*streamCall{},
		changed: make(chan struct{}),
	}
	go c.readLoop()
	t.Cleanup(c.Close)
	return c
}

// Close closes the connection and waits for the reader.
func (c *streamClient) Close() {
	c.close.Do(func() { _ = c.conn.Close() })
	<-c.done
}

func (c *streamClient) readLoop() {
	defer close(c.done)
	br := bufio.NewReaderSize(c.conn, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			c.dispatch(line, time.Now())
		}
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.notifyLocked()
			c.mu.Unlock()
			return
		}
	}
}

func (c *streamClient) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// streamLine tells a chunk line from a final answer.
type streamLine struct {
	ID    json.RawMessage `json:"id"`
	Chunk *string         `json:"chunk"`
	OK    *bool           `json:"ok"`
}

func (c *streamClient) dispatch(line []byte, at time.Time) {
	text := strings.TrimRight(string(line), "\r\n")
	var sl streamLine
	err := json.Unmarshal(line, &sl)
	key := idKey(sl.ID)
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.notifyLocked()
	call, ok := c.calls[key]
	if !ok {
		c.stray = append(c.stray, text)
		return
	}
	switch {
	case call.final != "":
		call.extra = append(call.extra, text)
	case err != nil:
		call.bad = append(call.bad, text)
	case sl.Chunk != nil && sl.OK == nil:
		call.chunks = append(call.chunks, *sl.Chunk)
		call.chunkAt = append(call.chunkAt, at)
	case sl.OK != nil && sl.Chunk == nil:
		call.final, call.finalAt = text, at
	default:
		call.bad = append(call.bad, text)
	}
}

// Start sends req (with "stream":true and a fresh id unless it has them).
func (c *streamClient) Start(t testing.TB, req Req) *streamCall {
	t.Helper()
	if _, ok := req["id"]; !ok {
		req["id"] = fmt.Sprintf("s-%d", c.ids.Add(1))
	}
	if _, ok := req["stream"]; !ok {
		req["stream"] = true
	}
	line, err := json.Marshal(req)
	if err != nil {
		t.Fatalf("marshal request: %v", err)
	}
	id, _ := json.Marshal(req["id"])
	call := &streamCall{c: c, key: idKey(id)}
	c.mu.Lock()
	if _, dup := c.calls[call.key]; dup {
		c.mu.Unlock()
		t.Fatalf("id %s used twice on one connection", call.key)
	}
	c.calls[call.key] = call
	c.mu.Unlock()

	c.wmu.Lock()
	defer c.wmu.Unlock()
	call.sent = time.Now()
	_ = c.conn.SetWriteDeadline(time.Now().Add(streamWait))
	if _, err := c.conn.Write(append(line, '\n')); err != nil {
		t.Fatalf("write request: %v", err)
	}
	return call
}

// Stream sends req and waits for its final line.
func (c *streamClient) Stream(t testing.TB, req Req) streamResult {
	t.Helper()
	return c.Start(t, req).Wait(t)
}

// Stray is the lines whose id matched no request.
func (c *streamClient) Stray() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.stray)
}

// waitUntil waits at most d for cond (called with c.mu held).
func (c *streamClient) waitUntil(d time.Duration, cond func() bool) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		c.mu.Lock()
		ok, ch, gone := cond(), c.changed, c.readErr != nil
		c.mu.Unlock()
		if ok {
			return true
		}
		if gone {
			return false
		}
		select {
		case <-ch:
		case <-timer.C:
			c.mu.Lock()
			defer c.mu.Unlock()
			return cond()
		}
	}
}

// Result is what the call received so far.
func (s *streamCall) Result() streamResult {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	r := streamResult{
		Key: s.key, Sent: s.sent,
		Chunks: slices.Clone(s.chunks), ChunkAt: slices.Clone(s.chunkAt),
		Extra: slices.Clone(s.extra), Bad: slices.Clone(s.bad),
		MetaChunks: -1, MetaBytes: -1,
	}
	if s.final != "" {
		r.Done, r.FinalAt = true, s.finalAt
		r.Final = parseResp([]byte(s.final))
		var f struct {
			Body json.RawMessage `json:"body"`
			Meta *struct {
				Chunks *int64 `json:"chunks"`
				Bytes  *int64 `json:"bytes"`
			} `json:"meta"`
		}
		_ = json.Unmarshal([]byte(s.final), &f)
		r.HasBody = f.Body != nil
		if f.Meta != nil && f.Meta.Chunks != nil {
			r.MetaChunks = *f.Meta.Chunks
		}
		if f.Meta != nil && f.Meta.Bytes != nil {
			r.MetaBytes = *f.Meta.Bytes
		}
	}
	return r
}

// Wait waits for the final line.
func (s *streamCall) Wait(t testing.TB) streamResult {
	t.Helper()
	return s.WaitFor(t, streamWait)
}

// WaitFor waits at most d for the final line.
func (s *streamCall) WaitFor(t testing.TB, d time.Duration) streamResult {
	t.Helper()
	if !s.c.waitUntil(d, func() bool { return s.final != "" }) {
		t.Fatalf("no final line within %v (read error %v); %s", d, s.c.readError(), s.Result())
	}
	return s.Result()
}

// WaitChunks waits until n chunks or the final line arrived.
func (s *streamCall) WaitChunks(t testing.TB, n int) streamResult {
	t.Helper()
	if !s.c.waitUntil(streamWait, func() bool { return len(s.chunks) >= n || s.final != "" }) {
		t.Fatalf("fewer than %d chunks within %v (read error %v); %s", n, streamWait, s.c.readError(), s.Result())
	}
	return s.Result()
}

func (c *streamClient) readError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// ---------------------------------------------------------------------------
// Requests and checks.

// streamReq is a streamed call to upstream at path; kv adds fields in pairs.
func streamReq(upstream, path string, kv ...any) Req {
	r := Req{"upstream": upstream, "path": path, "stream": true,
		"body": map[string]any{"model": "phi3", "stream": true, "prompt": "Say hello"}}
	for i := 0; i+1 < len(kv); i += 2 {
		r[kv[i].(string)] = kv[i+1]
	}
	return r
}

// streamPolicies is FENDER_POLICIES from upstream name to policy object.
func streamPolicies(p map[string]map[string]any) string {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// wantStreamShape checks what every final line of a stream must satisfy:
// it came, no line followed it, nothing undecodable, no body when the
// upstream answer was streamed, and meta.chunks / meta.bytes match the chunks
// received.
func wantStreamShape(t testing.TB, r streamResult) {
	t.Helper()
	if !r.Done {
		t.Fatalf("no final line: %s", r)
	}
	if r.Final.DecodeErr != nil {
		t.Errorf("final line does not decode: %v (%s)", r.Final.DecodeErr, r.Final.Raw)
	}
	if len(r.Extra) > 0 || len(r.Bad) > 0 {
		t.Errorf("lines after the final answer or undecodable: %s", r)
	}
	if r.MetaChunks != int64(len(r.Chunks)) {
		t.Errorf("meta.chunks: got %d, want %d, the chunk lines received (%s)", r.MetaChunks, len(r.Chunks), r)
	}
	if r.MetaBytes != r.Bytes() {
		t.Errorf("meta.bytes: got %d, want %d, the bytes of the chunks received (%s)", r.MetaBytes, r.Bytes(), r)
	}
}

// wantStreamOK checks a complete stream: ok:true, status 200, headers, no
// body, and the chunks (unless want is nil) equal want in order.
func wantStreamOK(t testing.TB, r streamResult, want []string) {
	t.Helper()
	wantStreamShape(t, r)
	if !r.Final.OK || r.Final.Error != nil {
		t.Fatalf("got %s, want a final ok:true", r)
	}
	if got := r.Final.StatusCode(); got != http.StatusOK {
		t.Errorf("status: got %d, want 200 (%s)", got, r.Final.Raw)
	}
	if len(r.Final.Headers) == 0 {
		t.Errorf("final line has no headers (%s)", r.Final.Raw)
	}
	if r.HasBody {
		t.Errorf("final line of a stream has a body, want none (%s)", r.Final.Raw)
	}
	if want != nil && !slices.Equal(r.Chunks, want) {
		t.Errorf("chunks:\n got %q\nwant %q", r.Chunks, want)
	}
}

// wantStreamError checks a failed stream: ok:false with code, retryable as
// given.
func wantStreamError(t testing.TB, r streamResult, code string, retryable bool) {
	t.Helper()
	if !r.Done {
		t.Fatalf("no final line: %s", r)
	}
	if r.Final.OK || r.Final.Error == nil {
		t.Fatalf("got %s, want a final ok:false %q", r, code)
	}
	if r.Final.Error.Code != code {
		t.Errorf("error code: got %q, want %q (%s)", r.Final.Error.Code, code, r)
	}
	if r.Final.Error.Retryable != retryable {
		t.Errorf("error retryable: got %v, want %v (%s)", r.Final.Error.Retryable, retryable, r.Final.Raw)
	}
}

// wantPrefix checks that got starts with want, element by element.
func wantPrefix(t testing.TB, what string, got, want []string) {
	t.Helper()
	if len(got) > len(want) || !slices.Equal(got, want[:len(got)]) {
		t.Errorf("%s: got %q, want a prefix of %q", what, got, want)
	}
}
