package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The streaming tests (SPEC 6) run fender against fake upstreams that speak
// OpenAI's chat-completions SSE and Ollama's /api/generate NDJSON, flushing
// each event with a delay, and read the chunk lines with a streamClient.

// TestStreamSSEOpenAI streams an OpenAI chat completion: one chunk per event,
// the event's data, in order, [DONE] included as the last chunk, then a
// final ok:true line with status and headers, no body, and meta.chunks and
// meta.bytes; the same with the policy's stream_end "[DONE]". Chunks go out
// as they arrive, not at the end.

func TestStreamSSEOpenAI(t *testing.T) {
	t.Parallel()
	const delay = 30 * time.Millisecond
	events := openAIEvents("Hel", "lo", ",", " wör", "ld", "!")
	var lastWrite atomic.Int64 // when the last event of the latest stream was sent
	u := newStreamUpstream(t, func(c *upCall) {
		if c.SSE(events, delay) {
			lastWrite.Store(time.Now().UnixNano())
		}
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("oai", u.URL, "plain", u.URL),
		"FENDER_POLICIES":  streamPolicies(map[string]map[string]any{"oai": {"stream_end": "[DONE]"}}),
	})
	c := dialStream(t, f.Socket)
	for _, up := range []string{"plain", "oai"} {
		t.Run(up, func(t *testing.T) {
			r := c.Stream(t, streamReq(up, "/v1/chat/completions"))
			wantStreamOK(t, r, events)
			if len(r.Chunks) > 0 && r.Chunks[len(r.Chunks)-1] != "[DONE]" {
				t.Errorf("last chunk: got %q, want [DONE]", r.Chunks[len(r.Chunks)-1])
			}
			if ct, _ := r.Final.Header("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("Content-Type header: got %q, want text/event-stream (%s)", ct, r.Final.Raw)
			}
			if id, _ := r.Final.Header("X-Request-Id"); id != "req_stream_1" {
				t.Errorf("X-Request-Id header: got %q, want req_stream_1 (%s)", id, r.Final.Raw)
			}
			wantAttempts(t, r.Final, 1)
			if r.Final.Meta != nil && (r.Final.Meta.Cached || r.Final.Meta.Upstream != up || r.Final.Meta.Model != "phi3") {
				t.Errorf("meta: got %s, want upstream %q, model phi3, not cached", r.Final.Raw, up)
			}
			// Incremental: the first chunk comes before the upstream sends
			// its last event, (len-1) × 30ms after the first.
			if len(r.ChunkAt) > 0 {
				if last := time.Unix(0, lastWrite.Load()); !r.ChunkAt[0].Before(last) {
					t.Errorf("first chunk %v after the upstream sent its last event: chunks were held back",
						r.ChunkAt[0].Sub(last).Round(time.Millisecond))
				}
			}
		})
	}
	if s := c.Stray(); len(s) > 0 {
		t.Errorf("lines with unknown ids: %q", s)
	}
}

// TestStreamNDJSONOllama streams an Ollama /api/generate answer: one chunk
// per line, the last one with "done":true, with stream_end `"done":true`.
func TestStreamNDJSONOllama(t *testing.T) {
	t.Parallel()
	lines := ollamaLines("The", " sky", " is", " blue", ".")
	u := newStreamUpstream(t, func(c *upCall) { c.NDJSON(lines, 20*time.Millisecond) })
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("ollama", u.URL),
		"FENDER_POLICIES":  streamPolicies(map[string]map[string]any{"ollama": {"stream_end": `"done":true`}}),
	})
	c := dialStream(t, f.Socket)
	r := c.Stream(t, streamReq("ollama", "/api/generate"))
	wantStreamOK(t, r, lines)
	if ct, _ := r.Final.Header("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type header: got %q, want application/x-ndjson", ct)
	}
	for i, ch := range r.Chunks {
		if !json.Valid([]byte(ch)) {
			t.Errorf("chunk %d is not one whole JSON line: %q", i, ch)
		}
	}
}

// TestStreamFraming checks the chunking rules on awkward but valid input,
// with lines split across flushes: SSE comments, event/id/retry fields,
// events without data skipped, "data:" without a space, multi-line data
// joined by "\n", CRLF; NDJSON blank lines skipped, CRLF, a last line without
// "\n".
func TestStreamFraming(t *testing.T) {
	t.Parallel()
	u := newStreamUpstream(t, func(c *upCall) {
		var pieces []string
		switch c.R.URL.Path {
		case "/sse":
			c.W.Header().Set("Content-Type", "text/event-stream")
			pieces = []string{
				": keep-alive comment\n\n",
				"event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
				"id: 7\nretry: 1000\ndata:{\"no\":\"sp", "ace\"}\n\n",
				"event: ping\n\n",
				"data: line one\n", "data: line two\n\n",
				"data: crlf\r\n\r\n",
				"data: [DONE]\n\n",
			}
		case "/ndjson":
			c.W.Header().Set("Content-Type", "application/jsonl")
			pieces = []string{"{\"a\":1}\r\n", "\n", "{\"b\":", "2}\n", "{\"c\":3}"}
		}
		c.W.WriteHeader(http.StatusOK)
		for _, p := range pieces {
			io.WriteString(c.W, p)
			c.Flush()
			if !c.Pause(15 * time.Millisecond) {
				return
			}
		}
	})
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := dialStream(t, f.Socket)
	t.Run("sse", func(t *testing.T) {
		r := c.Stream(t, streamReq("up", "/sse"))
		wantStreamOK(t, r, []string{`{"type":"message_start"}`, `{"no":"space"}`, "line one\nline two", "crlf", "[DONE]"})
	})
	t.Run("ndjson", func(t *testing.T) {
		r := c.Stream(t, streamReq("up", "/ndjson"))
		wantStreamOK(t, r, []string{`{"a":1}`, `{"b":2}`, `{"c":3}`})
	})
}

// TestStreamRaw streams a text/plain body per read: the chunks put together
// are the body, byte for byte, even when a read ends inside a multi-byte
// UTF-8 character.
func TestStreamRaw(t *testing.T) {
	t.Parallel()
	ascii := []string{"The quick ", "brown fox ", "jumps over ", "the lazy dog."}
	// "naïve café 日本語" cut inside ï, é and 語.
	text := "naïve café 日本語"
	utf8Pieces := []string{text[:3], text[3:11], text[11 : len(text)-1], text[len(text)-1:]}
	u := newStreamUpstream(t, func(c *upCall) {
		pieces := ascii
		if c.R.URL.Path == "/utf8" {
			pieces = utf8Pieces
		}
		c.W.Header().Set("Content-Type", "text/plain; charset=utf-8")
		c.W.WriteHeader(http.StatusOK)
		for _, p := range pieces {
			io.WriteString(c.W, p)
			c.Flush()
			if !c.Pause(40 * time.Millisecond) {
				return
			}
		}
	})
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := dialStream(t, f.Socket)
	for _, tc := range []struct {
		path   string
		pieces []string
	}{{"/ascii", ascii}, {"/utf8", utf8Pieces}} {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			r := c.Stream(t, streamReq("up", tc.path))
			wantStreamOK(t, r, nil)
			body := strings.Join(tc.pieces, "")
			if got := strings.Join(r.Chunks, ""); got != body {
				t.Errorf("chunks put together: got %q, want the body %q (chunks %q)", got, body, r.Chunks)
			}
			if r.MetaBytes != int64(len(body)) {
				t.Errorf("meta.bytes: got %d, want %d, the body's length", r.MetaBytes, len(body))
			}
			if len(r.Chunks) < 2 {
				t.Errorf("chunks: got %d, want one per read (the body came in %d flushes 40ms apart)", len(r.Chunks), len(tc.pieces))
			}
		})
	}
}

// TestStreamBrokenMidStream ends streams badly after their first chunks: a
// TCP reset, a close (FIN) inside a chunked body, a chunked body cut inside
// a chunk or between chunks, and a body shorter than its Content-Length. Each
// gives the chunks received, then a final ok:false unavailable, never
// ok:true, and no retry (one upstream request).
func TestStreamBrokenMidStream(t *testing.T) {
	t.Parallel()
	events := openAIEvents("a", "b", "c", "d", "e", "f")
	var mu sync.Mutex
	gates := map[string]chan struct{}{}
	gate := func(path string) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if gates[path] == nil {
			gates[path] = make(chan struct{})
		}
		return gates[path]
	}
	u := newStreamUpstream(t, func(c *upCall) {
		path := c.R.URL.Path
		switch path {
		case "/reset-rst", "/close-fin":
			c.SSE(events[:2], 10*time.Millisecond)
			if c.Await(gate(path)) { // the client has both chunks
				c.Reset(path == "/reset-rst")
			}
		case "/ndjson-rst":
			c.NDJSON(ollamaLines("x", "y", "z")[:2], 10*time.Millisecond)
			if c.Await(gate(path)) {
				c.Reset(true)
			}
		case "/chunked-cut", "/chunked-nolast":
			conn := c.Hijack()
			defer conn.Close()
			fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			for _, e := range events[:2] {
				d := "data: " + e + "\n\n"
				fmt.Fprintf(conn, "%x\r\n%s\r\n", len(d), d)
			}
			if !c.Await(gate(path)) { // the client has both chunks
				return
			}
			if path == "/chunked-cut" {
				// Half of a chunk, then the connection closes. (Go's
				// chunked reader holds back data read together with a
				// partial chunk, so this comes after the gate.)
				d := "data: " + events[2] + "\n\n"
				fmt.Fprintf(conn, "%x\r\n%s", len(d), d[:20])
				c.Pause(100 * time.Millisecond)
			}
		case "/short-length", "/short-length-raw":
			conn := c.Hijack()
			defer conn.Close()
			ctype, body := "text/event-stream", ""
			for i := 0; len(body) < 100; i++ {
				body += fmt.Sprintf("data: event-%02d\n\n", i)
			}
			if path == "/short-length-raw" {
				ctype, body = "text/plain", strings.Repeat("r", 100)
			}
			fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: 1000\r\n\r\n%s", ctype, body)
			c.Await(gate(path))
		}
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":        upstreams("up", u.URL),
		"FENDER_BACKOFF_INITIAL":  "10ms",
		"FENDER_BREAKER_FAILURES": "100", // the subtests share a breaker
	})
	for _, path := range []string{"/reset-rst", "/close-fin", "/ndjson-rst", "/chunked-cut", "/chunked-nolast", "/short-length", "/short-length-raw"} {
		t.Run(strings.TrimPrefix(path, "/"), func(t *testing.T) {
			t.Parallel()
			c := dialStream(t, f.Socket)
			call := c.Start(t, streamReq("up", path))
			call.WaitChunks(t, 1)
			if path != "/short-length" && path != "/short-length-raw" {
				call.WaitChunks(t, 2)
			}
			close(gate(path))
			r := call.Wait(t)
			if r.Final.OK {
				t.Fatalf("a broken stream ended ok:true: %s", r)
			}
			wantStreamError(t, r, "unavailable", true)
			wantStreamShape(t, r)
			if len(r.Chunks) == 0 {
				t.Errorf("no chunk before the failure: %s", r)
			}
			if path == "/reset-rst" || path == "/close-fin" || strings.HasPrefix(path, "/chunked") {
				wantPrefix(t, "chunks", r.Chunks, events)
			}
			if got := r.Final.StatusCode(); got != http.StatusOK {
				t.Errorf("status: got %d, want the upstream's 200 (%s)", got, r.Final.Raw)
			}
			wantAttempts(t, r.Final, 1)
			// A retry would come within a backoff of 10ms; allow it time.
			time.Sleep(100 * time.Millisecond)
			if n := u.PathHits(path); n != 1 {
				t.Errorf("upstream requests to %s: got %d, want 1 (no retry after the first chunk)", path, n)
			}
		})
	}
}

// TestStreamStalled stops sending after two events: with FENDER_TIMEOUT
// 300ms the stream ends with a final timeout no sooner than 300ms after the
// last event was sent and not much later.
