package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
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
