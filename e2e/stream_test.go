package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
func TestStreamStalled(t *testing.T) {
	t.Parallel()
	const idle = 300 * time.Millisecond
	var lastSent atomic.Int64
	events := openAIEvents("slow", "ly")
	u := newStreamUpstream(t, func(c *upCall) {
		c.SSE(events[:2], 10*time.Millisecond)
		lastSent.Store(time.Now().UnixNano())
		c.Hang()
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("up", u.URL),
		"FENDER_TIMEOUT":   idle.String(),
	})
	c := dialStream(t, f.Socket)
	r := c.Stream(t, streamReq("up", "/v1/chat/completions"))
	wantStreamError(t, r, "timeout", true)
	wantStreamShape(t, r)
	if len(r.Chunks) != 2 {
		t.Errorf("chunks: got %d, want the 2 sent before the stall (%s)", len(r.Chunks), r)
	}
	gap := r.FinalAt.Sub(time.Unix(0, lastSent.Load()))
	wantBetween(t, "final line after the last event", gap, idle, idle+2*slack)
	if n := u.Hits(); n != 1 {
		t.Errorf("upstream requests: got %d, want 1 (no retry after the first chunk)", n)
	}
}

// TestStreamDeadline streams an event every 100ms for ever under
// timeout_ms 800: the stream ends with a final timeout near 800ms, after the
// chunks that came by then.
func TestStreamDeadline(t *testing.T) {
	t.Parallel()
	const deadline = 800 * time.Millisecond
	u := newStreamUpstream(t, func(c *upCall) {
		c.StartSSE()
		for i := 0; ; i++ {
			c.Event(fmt.Sprintf(`{"i":%d}`, i))
			if !c.Pause(100 * time.Millisecond) {
				return
			}
		}
	})
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := dialStream(t, f.Socket)
	r := c.Stream(t, streamReq("up", "/v1/chat/completions", "timeout_ms", deadline.Milliseconds()))
	wantStreamError(t, r, "timeout", true)
	wantStreamShape(t, r)
	wantBetween(t, "final line after the request", r.Elapsed(), deadline, deadline+50*time.Millisecond+2*slack)
	if len(r.Chunks) < 3 {
		t.Errorf("chunks: got %d, want about 8 (one per 100ms for 800ms)", len(r.Chunks))
	}
	for i, ch := range r.Chunks {
		if want := fmt.Sprintf(`{"i":%d}`, i); ch != want {
			t.Errorf("chunk %d: got %q, want %q", i, ch, want)
			break
		}
	}
}

// TestStreamEnd checks stream_end: a stream that ends cleanly without a last
// chunk containing it is truncated (unavailable); without stream_end the
// same stream is ok.
func TestStreamEnd(t *testing.T) {
	t.Parallel()
	events := openAIEvents("cut", " off")
	lines := ollamaLines("cut", " off")
	u := newStreamUpstream(t, func(c *upCall) {
		switch c.R.URL.Path {
		case "/sse-no-done":
			c.SSE(events[:len(events)-1], 10*time.Millisecond)
		case "/ndjson-no-done":
			c.NDJSON(lines[:len(lines)-1], 10*time.Millisecond)
		case "/ndjson":
			c.NDJSON(lines, 10*time.Millisecond)
		case "/sse-empty":
			c.StartSSE()
		}
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("oai", u.URL, "ollama", u.URL, "plain", u.URL),
		"FENDER_POLICIES": streamPolicies(map[string]map[string]any{
			"oai": {"stream_end": "[DONE]"}, "ollama": {"stream_end": `"done":true`},
		}),
	})
	c := dialStream(t, f.Socket)
	for _, tc := range []struct {
		up, path string
		want     []string
		code     string
	}{
		{"oai", "/sse-no-done", events[:len(events)-1], "unavailable"},
		{"plain", "/sse-no-done", events[:len(events)-1], ""},
		{"ollama", "/ndjson-no-done", lines[:len(lines)-1], "unavailable"},
		{"ollama", "/ndjson", lines, ""},
		{"oai", "/sse-empty", nil, "unavailable"},
		{"plain", "/sse-empty", nil, ""},
	} {
		t.Run(tc.up+tc.path, func(t *testing.T) {
			r := c.Stream(t, streamReq(tc.up, tc.path))
			if tc.code == "" {
				wantStreamOK(t, r, tc.want)
				return
			}
			wantStreamError(t, r, tc.code, true)
			wantStreamShape(t, r)
			if !slices.Equal(r.Chunks, tc.want) {
				t.Errorf("chunks: got %q, want %q", r.Chunks, tc.want)
			}
		})
	}
}

// TestStreamRetriesBeforeFirstChunk retries failures before the first chunk:
// two 503s then a stream (attempts 3), a reset before any answer, a reset
// after the headers but before any event, and an attempt that stalls before
// its first event; each ends ok with every chunk exactly once.
func TestStreamRetriesBeforeFirstChunk(t *testing.T) {
	t.Parallel()
	const timeout = 400 * time.Millisecond
	events := openAIEvents("third", " time", " lucky")
	u := newStreamUpstream(t, func(c *upCall) {
		switch c.R.URL.Path {
		case "/503x2":
			if c.N <= 2 {
				writeJSON(c.W, http.StatusServiceUnavailable, map[string]any{"error": map[string]any{"message": "overloaded"}})
				return
			}
		case "/reset-before-headers":
			if c.N == 1 {
				c.Reset(true)
				return
			}
		case "/reset-after-headers":
			if c.N == 1 {
				c.StartSSE()
				c.Pause(20 * time.Millisecond)
				c.Reset(true)
				return
			}
		case "/stall-before-first":
			if c.N == 1 {
				c.StartSSE()
				c.Hang()
				return
			}
		}
		c.SSE(events, 10*time.Millisecond)
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":        upstreams("up", u.URL),
		"FENDER_BACKOFF_INITIAL":  "10ms",
		"FENDER_TIMEOUT":          timeout.String(),
		"FENDER_BREAKER_FAILURES": "100", // the subtests share a breaker
	})
	for _, tc := range []struct {
		path     string
		attempts int
	}{{"/503x2", 3}, {"/reset-before-headers", 2}, {"/reset-after-headers", 2}, {"/stall-before-first", 2}} {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			t.Parallel()
			c := dialStream(t, f.Socket)
			r := c.Stream(t, streamReq("up", tc.path))
			wantStreamOK(t, r, events)
			wantAttempts(t, r.Final, tc.attempts)
			if n := u.PathHits(tc.path); n != tc.attempts {
				t.Errorf("upstream requests: got %d, want %d", n, tc.attempts)
			}
			if tc.path == "/stall-before-first" && r.Elapsed() < timeout {
				t.Errorf("answer after %v, want no sooner than the %v attempt timeout", r.Elapsed(), timeout)
			}
		})
	}
}

// TestStreamFallback falls back before the first chunk: the primary answers
// 503 (retries 0), the fallback upstream streams, meta.fallback names it.
// After a first chunk there is no fallback: a stream of the primary that
// breaks ends unavailable and the fallback is never asked.
func TestStreamFallback(t *testing.T) {
	t.Parallel()
	events := openAIEvents("from", " backup")
	oai := newStreamUpstream(t, func(c *upCall) {
		if c.R.URL.Path == "/midway" {
			c.SSE(events[:2], 10*time.Millisecond)
			c.Pause(100 * time.Millisecond)
			c.Reset(false)
			return
		}
		writeJSON(c.W, http.StatusServiceUnavailable, map[string]any{"error": "down"})
	})
	backup := newStreamUpstream(t, func(c *upCall) { c.SSE(events, 10*time.Millisecond) })
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("oai", oai.URL, "backup", backup.URL),
		"FENDER_POLICIES":  streamPolicies(map[string]map[string]any{"oai": {"retries": 0, "fallback": []string{"backup"}}}),
	})
	c := dialStream(t, f.Socket)

	r := c.Stream(t, streamReq("oai", "/v1/chat/completions"))
	wantStreamOK(t, r, events)
	if r.Final.Meta == nil || r.Final.Meta.Fallback != "backup" {
		t.Errorf("meta.fallback: want \"backup\" (%s)", r.Final.Raw)
	}
	if oai.Hits() != 1 || backup.Hits() != 1 {
		t.Errorf("upstream requests: oai %d, backup %d, want 1 and 1", oai.Hits(), backup.Hits())
	}

	r = c.Stream(t, streamReq("oai", "/midway"))
	wantStreamError(t, r, "unavailable", true)
	wantStreamShape(t, r)
	wantPrefix(t, "chunks", r.Chunks, events)
	if backup.PathHits("/midway") != 0 {
		t.Errorf("the fallback was asked after the primary's first chunk")
	}
	if r.Final.Meta != nil && r.Final.Meta.Fallback != "" {
		t.Errorf("meta.fallback: got %q, want \"\" (%s)", r.Final.Meta.Fallback, r.Final.Raw)
	}
}

// TestStreamNon2xx asks for a stream and gets a 404: a single final line,
// ok:false upstream_status, status 404 and the upstream's body, no chunk.
func TestStreamNon2xx(t *testing.T) {
	t.Parallel()
	const body = `{"error":{"message":"model 'nope' not found","type":"invalid_request_error","code":"model_not_found"}}`
	u := newStreamUpstream(t, func(c *upCall) {
		c.W.Header().Set("Content-Type", "application/json")
		c.W.WriteHeader(http.StatusNotFound)
		io.WriteString(c.W, body)
	})
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := dialStream(t, f.Socket)
	r := c.Stream(t, streamReq("up", "/v1/chat/completions"))
	wantStreamError(t, r, "upstream_status", false)
	wantStatus(t, r.Final, http.StatusNotFound)
	if len(r.Chunks) != 0 || len(r.Extra) != 0 {
		t.Errorf("want one final line and no chunk: %s", r)
	}
	if !jsonEqual(t, string(r.Final.Body), body) {
		t.Errorf("body: got %s, want the upstream's %s", r.Final.Body, body)
	}
	wantAttempts(t, r.Final, 1)
}

// TestStreamNotCached makes the same streamed call twice with the cache on:
// both reach the upstream, and a plain call after them is not served from
// a stream.
func TestStreamNotCached(t *testing.T) {
	t.Parallel()
	events := openAIEvents("no", " cache")
	u := newStreamUpstream(t, func(c *upCall) { c.SSE(events, 5*time.Millisecond) })
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := dialStream(t, f.Socket)
	for i := range 2 {
		r := c.Stream(t, streamReq("up", "/v1/chat/completions", "cache", "use"))
		wantStreamOK(t, r, events)
		if r.Final.Meta != nil && r.Final.Meta.Cached {
			t.Errorf("stream %d: meta.cached true (%s)", i, r.Final.Raw)
		}
	}
	if n := u.Hits(); n != 2 {
		t.Errorf("upstream requests after 2 identical streams: got %d, want 2", n)
	}
	req := streamReq("up", "/v1/chat/completions", "cache", "use", "stream", false)
	req["id"] = "plain"
	r := f.Call(t, req)
	wantOK(t, r)
	if (r.Meta != nil && r.Meta.Cached) || u.Hits() != 3 {
		t.Errorf("a plain call after 2 streams: upstream requests %d, want 3; answer %s", u.Hits(), r.Raw)
	}
}

// interleaveUpstream streams, on /s/K, 8 events "K:0".."K:7" 8-14ms apart
// (the spacing depends on K so that streams interleave).
func interleaveUpstream(t testing.TB) *streamUpstream {
	return newStreamUpstream(t, func(c *upCall) {
		k := strings.TrimPrefix(c.R.URL.Path, "/s/")
		var events []string
		for i := range 8 {
			events = append(events, k+":"+fmt.Sprint(i))
		}
		var n int
		fmt.Sscan(k, &n)
		c.SSE(events, time.Duration(8+n%7)*time.Millisecond)
	})
}

func interleaveWant(k int) []string {
	var out []string
	for i := range 8 {
		out = append(out, fmt.Sprintf("%d:%d", k, i))
	}
	return out
}

// TestStreamInterleaving runs 20 streams at once on one connection, ids of
// both JSON types: every chunk line carries its own stream's id, each
// stream's chunks arrive in order and complete, and the streams really run
// at once. Then 100 streams over 5 connections all complete.
func TestStreamInterleaving(t *testing.T) {
	t.Parallel()
	u := interleaveUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})

	t.Run("one connection", func(t *testing.T) {
		c := dialStream(t, f.Socket)
		const n = 20
		calls := make([]*streamCall, n)
		for k := range n {
			var id any = k
			if k%2 == 1 {
				id = fmt.Sprintf("s-%d", k)
			}
			calls[k] = c.Start(t, streamReq("up", fmt.Sprintf("/s/%d", k), "id", id))
		}
		var firstFinal time.Time
		results := make([]streamResult, n)
		for k, call := range calls {
			results[k] = call.Wait(t)
			wantStreamOK(t, results[k], interleaveWant(k))
			if firstFinal.IsZero() || results[k].FinalAt.Before(firstFinal) {
				firstFinal = results[k].FinalAt
			}
		}
		started := 0
		for _, r := range results {
			if len(r.ChunkAt) > 0 && r.ChunkAt[0].Before(firstFinal) {
				started++
			}
		}
		if started < n/2 {
			t.Errorf("streams with a chunk before the first stream ended: %d of %d, want most: streams are not concurrent", started, n)
		}
		if s := c.Stray(); len(s) > 0 {
			t.Errorf("lines whose id (or id type) matches no request: %q", s)
		}
	})

	t.Run("100 over 5 connections", func(t *testing.T) {
		var wg sync.WaitGroup
		for conn := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := dialStream(t, f.Socket)
				calls := make([]*streamCall, 20)
				for i := range calls {
					k := 100 + conn*20 + i
					calls[i] = c.Start(t, streamReq("up", fmt.Sprintf("/s/%d", k), "id", k))
				}
				for i, call := range calls {
					r := call.WaitFor(t, streamWait)
					wantStreamOK(t, r, interleaveWant(100+conn*20+i))
				}
				if s := c.Stray(); len(s) > 0 {
					t.Errorf("connection %d: lines with unknown ids: %q", conn, s)
				}
			}()
		}
		wg.Wait()
	})
}

// TestStreamSlowReader streams 20 MB in 4 KB events to a client that reads
// slowly: fender passes the back-pressure on (the upstream cannot write far
// ahead of the client), its RSS stays well under the stream's size, another
// connection is served at once, and the stream completes when the client
// speeds up.
func TestStreamSlowReader(t *testing.T) {
	t.Parallel()
	const (
		eventData = 4 << 10
		total     = 20 << 20
		nEvents   = total / eventData
	)
	var written atomic.Int64
	payload := strings.Repeat("x", eventData)
	u := newStreamUpstream(t, func(c *upCall) {
		c.StartSSE()
		for i := 0; i < nEvents; i++ {
			if _, err := io.WriteString(c.W, "data: "+payload+"\n\n"); err != nil {
				return
			}
			written.Add(eventData)
			if i%16 == 15 {
				c.Flush()
			}
		}
		io.WriteString(c.W, "data: [DONE]\n\n")
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":          upstreams("up", u.URL),
		"FENDER_MAX_RESPONSE_BYTES": fmt.Sprint(64 << 20),
		"FENDER_POLICIES":           streamPolicies(map[string]map[string]any{"up": {"stream_end": "[DONE]"}}),
	})
	pid := f.cmd.Process.Pid
	baseRSS := procStatusKB(t, pid, "VmRSS")

	conn, err := net.Dial("unix", f.Socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(conn, `{"id":"big","upstream":"up","path":"/v1/chat/completions","stream":true}`+"\n"); err != nil {
		t.Fatalf("write: %v", err)
	}

	var maxRSS atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if b, err := readProcStatusKB(pid, "VmRSS"); err == nil && b > maxRSS.Load() {
				maxRSS.Store(b)
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	// Slow phase: 8 KB every 20 ms for 1.5 s; the upstream's progress is
	// noted half-way.
	br := bufio.NewReaderSize(conn, 4<<10)
	var read int64
	buf := make([]byte, 8<<10)
	slowUntil := time.Now().Add(1500 * time.Millisecond)
	var lineBuf []byte
	var chunkLines int
	var final []byte
	consume := func(p []byte) {
		for len(p) > 0 {
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				lineBuf = append(lineBuf, p...)
				return
			}
			lineBuf = append(lineBuf, p[:i]...)
			if bytes.HasPrefix(lineBuf, []byte(`{"id":"big","chunk":`)) {
				chunkLines++
			} else {
				final = append([]byte(nil), lineBuf...)
			}
			lineBuf = lineBuf[:0]
			p = p[i+1:]
		}
	}
	var midWritten, midRead int64
	for time.Now().Before(slowUntil) {
		if midWritten == 0 && time.Until(slowUntil) < 750*time.Millisecond {
			midWritten, midRead = written.Load(), read
		}
		n, err := br.Read(buf)
		read += int64(n)
		consume(buf[:n])
		if err != nil {
			t.Fatalf("read after %d bytes: %v", read, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ahead := written.Load()
	t.Logf("slow phase: client read %d KB, upstream wrote %d KB of %d KB (%d KB in the last 750ms, while the client read %d KB)",
		read>>10, ahead>>10, total>>10, (ahead-midWritten)>>10, (read-midRead)>>10)
	if ahead > total/2 {
		t.Errorf("upstream wrote %d MB while the client read %d KB: a slow reader does not slow the upstream down", ahead>>20, read>>10)
	}
	if step := ahead - midWritten; step > (read-midRead)+2<<20 {
		t.Errorf("upstream wrote %d KB in the last 750ms of the slow phase while the client read %d KB: want about the client's pace", step>>10, (read-midRead)>>10)
	}

	// Another connection is served at once.
	d := timed(func() {
		if err := pingOnce(f.Socket); err != nil {
			t.Errorf("ping on another connection during the slow stream: %v", err)
		}
	})
	if d > 250*time.Millisecond+slack {
		t.Errorf("ping on another connection took %v during the slow stream", d)
	}

	// Fast phase: read to the end.
	for final == nil {
		n, err := br.Read(buf)
		read += int64(n)
		consume(buf[:n])
		if err != nil {
			t.Fatalf("read after %d bytes (%d chunk lines): %v", read, chunkLines, err)
		}
	}
	close(stopSampling)
	<-sampled
	r := parseResp(final)
	if !r.OK {
		t.Fatalf("final line: got %s, want ok:true", tail(r.Raw, 2000))
	}
	var m struct {
		Meta struct {
			Chunks int64 `json:"chunks"`
			Bytes  int64 `json:"bytes"`
		} `json:"meta"`
	}
	_ = json.Unmarshal(final, &m)
	if m.Meta.Chunks != nEvents+1 || int(chunkLines) != nEvents+1 {
		t.Errorf("chunks: meta %d, lines %d, want %d", m.Meta.Chunks, chunkLines, nEvents+1)
	}
	if m.Meta.Bytes != total+int64(len("[DONE]")) {
		t.Errorf("meta.bytes: got %d, want %d", m.Meta.Bytes, total+len("[DONE]"))
	}
	growth := maxRSS.Load() - baseRSS
	t.Logf("fender RSS: %d KB at start, %d KB at most (+%d KB) for a %d MB stream", baseRSS, maxRSS.Load(), growth, total>>20)
	if growth > 30<<10 {
		t.Errorf("fender RSS grew by %d MB streaming %d MB to a slow reader, want under 30 MB", growth>>10, total>>20)
	}
}

// readProcStatusKB is procStatusKB without a testing.TB, for goroutines.
func readProcStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var n int64
			_, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &n)
			return n, err
		}
	}
	return 0, fmt.Errorf("no %s", field)
}

// TestStreamClientDisconnect closes the client's connection mid-stream, once
// while the upstream is stalled and once while it streams: the upstream
// request is cancelled within about a second.
func TestStreamClientDisconnect(t *testing.T) {
	t.Parallel()
	cancelled := map[string]chan time.Time{"/stalled": make(chan time.Time, 1), "/flowing": make(chan time.Time, 1)}
	u := newStreamUpstream(t, func(c *upCall) {
		path := c.R.URL.Path
		c.StartSSE()
		for i := 0; ; i++ {
			if i < 2 || path == "/flowing" {
				c.Event(fmt.Sprintf(`{"i":%d}`, i))
			}
			if !c.Pause(50 * time.Millisecond) {
				if c.R.Context().Err() != nil {
					select {
					case cancelled[path] <- time.Now():
					default:
					}
				}
				return
			}
		}
	})
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	for _, path := range []string{"/stalled", "/flowing"} {
		t.Run(strings.TrimPrefix(path, "/"), func(t *testing.T) {
			t.Parallel()
			c := dialStream(t, f.Socket)
			c.Start(t, streamReq("up", path, "timeout_ms", 20000)).WaitChunks(t, 2)
			closed := time.Now()
			c.Close()
			select {
			case at := <-cancelled[path]:
				wantBetween(t, "upstream request cancelled after the client left", at.Sub(closed), 0, time.Second+slack)
			case <-time.After(5 * time.Second):
				t.Fatalf("upstream request not cancelled 5s after the client closed its connection")
			}
		})
	}
	t.Cleanup(func() {
		if err := pingOnce(f.Socket); err != nil {
			t.Errorf("ping after the disconnects: %v", err)
		}
	})
}

// TestStreamSIGTERM sends SIGTERM with streams in flight: a long one is cut
// by FENDER_DRAIN_TIMEOUT 500ms with a final shutting_down after more chunks;
// a short one finishes ok within the drain; fender exits 0 both times.
func TestStreamSIGTERM(t *testing.T) {
	t.Parallel()
	t.Run("long stream cut by the drain timeout", func(t *testing.T) {
		t.Parallel()
		const drain = 500 * time.Millisecond
		u := newStreamUpstream(t, func(c *upCall) {
			c.StartSSE()
			for i := 0; ; i++ {
				c.Event(fmt.Sprintf(`{"i":%d}`, i))
				if !c.Pause(100 * time.Millisecond) {
					return
				}
			}
		})
		f := startFender(t, map[string]string{
			"FENDER_UPSTREAMS":     upstreams("up", u.URL),
			"FENDER_DRAIN_TIMEOUT": drain.String(),
		})
		c := dialStream(t, f.Socket)
		call := c.Start(t, streamReq("up", "/v1/chat/completions", "timeout_ms", 20000))
		before := len(call.WaitChunks(t, 2).Chunks)
		sig := time.Now()
		f.Signal(t, syscall.SIGTERM)
		r := call.Wait(t)
		wantStreamError(t, r, "shutting_down", true)
		wantStreamShape(t, r)
		wantBetween(t, "final line after SIGTERM", r.FinalAt.Sub(sig), drain, drain+2*slack)
		if len(r.Chunks) <= before {
			t.Errorf("chunks: %d at SIGTERM, %d at the end: the stream did not go on during the drain", before, len(r.Chunks))
		}
		if code := f.WaitExit(t, stopTimeout); code != 0 {
			t.Errorf("exit status: got %d, want 0", code)
		}
	})
	t.Run("short stream finishes", func(t *testing.T) {
		t.Parallel()
		events := openAIEvents("done", " in", " time")
		u := newStreamUpstream(t, func(c *upCall) { c.SSE(events, 60*time.Millisecond) })
		f := startFender(t, map[string]string{
			"FENDER_UPSTREAMS":     upstreams("oai", u.URL),
			"FENDER_POLICIES":      streamPolicies(map[string]map[string]any{"oai": {"stream_end": "[DONE]"}}),
			"FENDER_DRAIN_TIMEOUT": "5s",
		})
		c := dialStream(t, f.Socket)
		call := c.Start(t, streamReq("oai", "/v1/chat/completions"))
		call.WaitChunks(t, 1)
		f.Signal(t, syscall.SIGTERM)
		wantStreamOK(t, call.Wait(t), events)
		if code := f.WaitExit(t, stopTimeout); code != 0 {
			t.Errorf("exit status: got %d, want 0", code)
		}
	})
}

// TestStreamMetrics checks fender_stream_first_chunk_seconds (its count
// moves by the streams that sent a chunk; its sum is at least their think
// time) and that fender_requests_total counts streams by code.
func TestStreamMetrics(t *testing.T) {
	t.Parallel()
	const think = 50 * time.Millisecond
	events := openAIEvents("m", "e", "t", "r", "i", "c")
	u := newStreamUpstream(t, func(c *upCall) {
		switch c.R.URL.Path {
		case "/ok", "/no-done":
			c.StartSSE()
			if !c.Pause(think) {
				return
			}
			evs := events
			if c.R.URL.Path == "/no-done" {
				evs = events[:len(events)-1]
			}
			for _, e := range evs {
				c.Event(e)
			}
		case "/empty":
			c.StartSSE()
		case "/404":
			writeJSON(c.W, http.StatusNotFound, map[string]any{"error": "not found"})
		}
	})
	f, m := startMetricsFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("oai", u.URL),
		"FENDER_POLICIES":  streamPolicies(map[string]map[string]any{"oai": {"stream_end": "[DONE]"}}),
	})
	before := m.scrape(t)
	c := dialStream(t, f.Socket)
	for _, tc := range []struct{ path, code string }{
		{"/ok", ""}, {"/ok", ""}, {"/ok", ""}, {"/no-done", "unavailable"}, {"/empty", "unavailable"}, {"/404", "upstream_status"},
	} {
		r := c.Stream(t, streamReq("oai", tc.path, "retries", 0))
		if got := r.Final.Code(); got != tc.code {
			t.Errorf("%s: got %s, want code %q", tc.path, r, tc.code)
		}
	}
	sc := m.await(t,
		deltaOf(before, 4, "fender_stream_first_chunk_seconds_count", "upstream", "oai"),
		deltaOf(before, 6, "fender_requests_total", "upstream", "oai"),
		deltaOf(before, 3, "fender_requests_total", "upstream", "oai", "code", "ok"),
		deltaOf(before, 2, "fender_requests_total", "upstream", "oai", "code", "unavailable"),
		deltaOf(before, 1, "fender_requests_total", "upstream", "oai", "code", "upstream_status"),
	)
	sum := sc.sum("fender_stream_first_chunk_seconds_sum", "upstream", "oai") - before.sum("fender_stream_first_chunk_seconds_sum", "upstream", "oai")
	if sum < 4*think.Seconds() {
		t.Errorf("fender_stream_first_chunk_seconds_sum moved by %gs, want at least 4 × %v of think time", sum, think)
	}
	if !sc.has("fender_stream_first_chunk_seconds_bucket", "upstream", "oai") {
		t.Errorf("no fender_stream_first_chunk_seconds_bucket{upstream=\"oai\"}:\n%s", sc.lines("fender_stream_first_chunk_seconds_bucket"))
	}
}

// TestStreamTooLarge streams past FENDER_MAX_RESPONSE_BYTES: the chunks
// within the limit, then a final too_large (not retryable), no retry.
func TestStreamTooLarge(t *testing.T) {
	t.Parallel()
	const limit = 8 << 10
	event := strings.Repeat("y", 1000)
	u := newStreamUpstream(t, func(c *upCall) {
		c.StartSSE()
		for range 20 {
			c.Event(event)
			if !c.Pause(5 * time.Millisecond) {
				return
			}
		}
		c.Event("[DONE]")
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":          upstreams("up", u.URL),
		"FENDER_MAX_RESPONSE_BYTES": fmt.Sprint(limit),
	})
	c := dialStream(t, f.Socket)
	r := c.Stream(t, streamReq("up", "/v1/chat/completions"))
	wantStreamError(t, r, "too_large", false)
	wantStreamShape(t, r)
	if len(r.Chunks) == 0 || r.Bytes() > limit {
		t.Errorf("chunks: got %d of %d bytes, want some, at most %d bytes", len(r.Chunks), r.Bytes(), limit)
	}
	if n := u.Hits(); n != 1 {
		t.Errorf("upstream requests: got %d, want 1", n)
	}
}

// TestStreamHeartbeatNotIdle sends SSE comment heartbeats (": ping") every
// 100ms during a 900ms pause between events, with FENDER_TIMEOUT 300ms: the
// upstream is never idle for 300ms, so the stream completes ok. (SSE
// comments exist as keep-alives; the idle timeout is about a silent
// upstream.)
func TestStreamHeartbeatNotIdle(t *testing.T) {
	t.Parallel()
	events := openAIEvents("think", "ing")
	u := newStreamUpstream(t, func(c *upCall) {
		c.StartSSE()
		c.Event(events[0])
		for range 9 {
			if !c.Pause(100 * time.Millisecond) {
				return
			}
			io.WriteString(c.W, ": ping\n\n")
			c.Flush()
		}
		for _, e := range events[1:] {
			c.Event(e)
		}
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("up", u.URL),
		"FENDER_TIMEOUT":   "300ms",
	})
	c := dialStream(t, f.Socket)
	r := c.Stream(t, streamReq("up", "/v1/chat/completions"))
	wantStreamOK(t, r, events)
}

// TestStreamPausedReaderNotIdle has a client stop reading for 1s, three
// times FENDER_TIMEOUT, while the upstream has already sent everything: the
// gap is the client's back-pressure, not an idle upstream, and the stream
// completes ok once the client reads again.
func TestStreamPausedReaderNotIdle(t *testing.T) {
	t.Parallel()
	const n = 1024 // 4 MB in 4 KB events: more than fender queues for a connection
	payload := strings.Repeat("z", 4<<10)
	u := newStreamUpstream(t, func(c *upCall) {
		c.StartSSE()
		for range n {
			if _, err := io.WriteString(c.W, "data: "+payload+"\n\n"); err != nil {
				return
			}
		}
		io.WriteString(c.W, "data: [DONE]\n\n")
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("up", u.URL),
		"FENDER_TIMEOUT":   "300ms",
	})
	conn, err := net.Dial("unix", f.Socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(streamWait))
	io.WriteString(conn, `{"id":1,"upstream":"up","path":"/v1/chat/completions","stream":true}`+"\n")
	time.Sleep(time.Second)
	br := bufio.NewReaderSize(conn, 64<<10)
	chunks := 0
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			t.Fatalf("read after %d chunks: %v", chunks, err)
		}
		if bytes.HasPrefix(line, []byte(`{"id":1,"chunk":`)) {
			chunks++
			continue
		}
		r := parseResp(line)
		if !r.OK {
			t.Errorf("after %d chunks: got %s, want ok:true with %d chunks", chunks, r.Raw, n+1)
		} else if chunks != n+1 {
			t.Errorf("chunks: got %d, want %d", chunks, n+1)
		}
		return
	}
}
