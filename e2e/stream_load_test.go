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
