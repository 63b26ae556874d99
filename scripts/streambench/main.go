// Command streambench measures the latency fender adds to a streamed answer.
// It starts a fake OpenAI-style SSE upstream in process (loopback HTTP) that,
// after a think time, sends N chat-completion chunk events at a fixed
// interval and then [DONE]. Each of R rounds reads the stream once directly
// over HTTP and once through fender over its Unix socket (alternating, so
// drift hits both alike), noting when each chunk arrives from the start of
// the run. It reports time to first chunk (TTFB) direct and via fender, the
// per-chunk added latency (chunk i via fender minus chunk i direct, in the
// same round), and the total stream time.
//
// Run from the repository root:
//
//	go run ./scripts/streambench [-fender PATH] [-events 200] [-interval 2ms] [-think 20ms] [-runs 30] [-json]
//
// Without -fender it builds the binary from the module root into a
// temporary directory. Everything stays on loopback and a Unix socket;
// fender is stopped with SIGTERM and the temporary files are removed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fender-sidecar/fender/scripts/internal/fenderproc"
)

type options struct {
	fender   string
	events   int
	interval time.Duration
	think    time.Duration
	runs     int
	timeout  time.Duration
	jsonOut  bool
}

func main() {
	var o options
	flag.StringVar(&o.fender, "fender", "", "fender binary to run (default: build it from the module root)")
	flag.IntVar(&o.events, "events", 200, "chunk events per stream (then [DONE])")
	flag.DurationVar(&o.interval, "interval", 2*time.Millisecond, "time between events")
	flag.DurationVar(&o.think, "think", 20*time.Millisecond, "upstream think time before the first event")
	flag.IntVar(&o.runs, "runs", 30, "rounds (each: one direct stream, one via fender)")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "bound on the whole benchmark")
	flag.BoolVar(&o.jsonOut, "json", false, "print the report as JSON")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "streambench:", err)
		os.Exit(2)
	}
	rep, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "streambench:", err)
		os.Exit(1)
	}
	if o.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
		return
	}
	rep.print(os.Stdout)
}

func (o options) validate() error {
	switch {
	case o.events < 1 || o.events > 1_000_000:
		return fmt.Errorf("-events must be 1..1000000, got %d", o.events)
	case o.runs < 1 || o.runs > 100_000:
		return fmt.Errorf("-runs must be 1..100000, got %d", o.runs)
	case o.interval < 0 || o.think < 0:
		return errors.New("-interval and -think must be >= 0")
	case o.timeout <= 0:
		return errors.New("-timeout must be > 0")
	}
	return nil
}

// ---------------------------------------------------------------------------
// Report.

// dist is a distribution of durations, in milliseconds.
type dist struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

func distOf(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) float64 {
		i := int(q*float64(len(s)-1) + 0.5)
		return float64(s[i].Nanoseconds()) / 1e6
	}
	return dist{Count: len(s), P50: at(0.50), P99: at(0.99), Max: at(1)}
}

type report struct {
	Events       int     `json:"events"`
	IntervalMs   float64 `json:"interval_ms"`
	ThinkMs      float64 `json:"think_ms"`
	Runs         int     `json:"runs"`
	TTFBDirect   dist    `json:"ttfb_direct_ms"`
	TTFBFender   dist    `json:"ttfb_fender_ms"`
	TTFBAdded    dist    `json:"ttfb_added_ms"`     // per round: via fender minus direct
	ChunkAdded   dist    `json:"chunk_added_ms"`    // per chunk and round
	TotalDirect  dist    `json:"total_direct_ms"`   // to the last chunk
	TotalFender  dist    `json:"total_fender_ms"`   // to the final line
	TotalAdded   dist    `json:"total_added_ms"`    // per round
	ChunksPerRun int     `json:"chunks_per_stream"` // [DONE] included
	FenderMetaOK bool    `json:"fender_meta_ok"`    // every final line ok with meta.chunks right
	WallSeconds  float64 `json:"wall_seconds"`
	FenderBinary string  `json:"fender_binary"`
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "streambench: %d events every %v after %v think, %d rounds (direct and via fender each)\n\n",
		r.Events, time.Duration(r.IntervalMs*1e6), time.Duration(r.ThinkMs*1e6), r.Runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "ms\tdirect p50\tdirect p99\tfender p50\tfender p99\tadded p50\tadded p99\t\n")
	fmt.Fprintf(tw, "time to first chunk\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t\n",
		r.TTFBDirect.P50, r.TTFBDirect.P99, r.TTFBFender.P50, r.TTFBFender.P99, r.TTFBAdded.P50, r.TTFBAdded.P99)
	fmt.Fprintf(tw, "per chunk (%d samples)\t\t\t\t\t%.3f\t%.3f\t\n", r.ChunkAdded.Count, r.ChunkAdded.P50, r.ChunkAdded.P99)
	fmt.Fprintf(tw, "total stream\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t\n",
		r.TotalDirect.P50, r.TotalDirect.P99, r.TotalFender.P50, r.TotalFender.P99, r.TotalAdded.P50, r.TotalAdded.P99)
	tw.Flush()
	ok := "all final lines ok, meta.chunks right"
	if !r.FenderMetaOK {
		ok = "SOME FINAL LINES NOT OK"
	}
	fmt.Fprintf(w, "\n%d chunks per stream; %s; wall %.1fs\n", r.ChunksPerRun, ok, r.WallSeconds)
}

// ---------------------------------------------------------------------------
// The run.

func run(o options) (*report, error) {
	wall := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "streambench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	bin := o.fender
	if bin == "" {
		if bin, err = buildFender(ctx, dir); err != nil {
			return nil, err
		}
	}
	up, err := startUpstream(o)
	if err != nil {
		return nil, err
	}
	defer up.close()

	sock := filepath.Join(dir, "f.sock")
	p, err := startFender(bin, map[string]string{
		"FENDER_SOCKET":       sock,
		"FENDER_METRICS_ADDR": "",
		"FENDER_UPSTREAMS":    "llm=" + up.url,
		"FENDER_POLICIES":     `{"llm":{"stream_end":"[DONE]","retries":0}}`,
		"FENDER_LOG_LEVEL":    "warn",
	})
	if err != nil {
		return nil, err
	}
	defer p.Stop(syscall.SIGTERM, 15*time.Second)
	if err := waitReady(ctx, sock, p); err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial fender: %w", err)
	}
	defer conn.Close()
	fc := &fenderConn{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}
	defer hc.CloseIdleConnections()

	want := o.events + 1
	// One warm-up round each, not counted: connection pools, page faults.
	if _, err := readDirect(ctx, hc, up.url, want); err != nil {
		return nil, err
	}
	if _, _, err := fc.stream(ctx, 0, want); err != nil {
		return nil, fmt.Errorf("%w; fender stderr:\n%s", err, tail(p.Output.String(), 4096))
	}

	rep := &report{Events: o.events, IntervalMs: ms(o.interval), ThinkMs: ms(o.think), Runs: o.runs,
		ChunksPerRun: want, FenderMetaOK: true, FenderBinary: bin}
	var ttfbD, ttfbF, ttfbAdd, chunkAdd, totD, totF, totAdd []time.Duration
	for i := range o.runs {
		var d, f []time.Duration
		var fin time.Duration
		var ok bool
		// Alternate which goes first in a round.
		for k := range 2 {
			if (i+k)%2 == 0 {
				if d, err = readDirect(ctx, hc, up.url, want); err != nil {
					return nil, fmt.Errorf("round %d direct: %w", i, err)
				}
			} else {
				if f, fin, ok, err = fc.streamChecked(ctx, int64(i+1), want); err != nil {
					return nil, fmt.Errorf("round %d via fender: %w; fender stderr:\n%s", i, err, tail(p.Output.String(), 4096))
				}
				rep.FenderMetaOK = rep.FenderMetaOK && ok
			}
		}
		if len(d) != want || len(f) != want {
			return nil, fmt.Errorf("round %d: %d chunks direct, %d via fender, want %d", i, len(d), len(f), want)
		}
		ttfbD, ttfbF, ttfbAdd = append(ttfbD, d[0]), append(ttfbF, f[0]), append(ttfbAdd, f[0]-d[0])
		for j := range d {
			chunkAdd = append(chunkAdd, f[j]-d[j])
		}
		totD, totF, totAdd = append(totD, d[len(d)-1]), append(totF, fin), append(totAdd, fin-d[len(d)-1])
	}
	rep.TTFBDirect, rep.TTFBFender, rep.TTFBAdded = distOf(ttfbD), distOf(ttfbF), distOf(ttfbAdd)
	rep.ChunkAdded = distOf(chunkAdd)
	rep.TotalDirect, rep.TotalFender, rep.TotalAdded = distOf(totD), distOf(totF), distOf(totAdd)
	conn.Close()
	if code := p.Stop(syscall.SIGTERM, 15*time.Second); code != 0 {
		return nil, fmt.Errorf("fender exited with status %d after SIGTERM; stderr:\n%s", code, tail(p.Output.String(), 4096))
	}
	rep.WallSeconds = time.Since(wall).Seconds()
	return rep, nil
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// ---------------------------------------------------------------------------
// Readers.

// readDirect streams from the upstream over HTTP and returns each event's
// arrival time from the start of the request.
func readDirect(ctx context.Context, hc *http.Client, url string, want int) ([]time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, url+"/v1/chat/completions",
		strings.NewReader(`{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("upstream status %d", resp.StatusCode)
	}
	out := make([]time.Duration, 0, want)
	br := bufio.NewReaderSize(resp.Body, 32<<10)
	has := false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			l := bytes.TrimRight(line, "\r\n")
			switch {
			case len(l) == 0 && has:
				out = append(out, time.Since(start))
				has = false
			case bytes.HasPrefix(l, []byte("data:")):
				has = true
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// fenderConn is one connection to fender, used for one stream at a time.
type fenderConn struct {
	conn net.Conn
	br   *bufio.Reader
}

type streamLine struct {
	Chunk *string `json:"chunk"`
	OK    *bool   `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Meta *struct {
		Chunks int `json:"chunks"`
	} `json:"meta"`
}

// stream asks fender for a stream with id and returns each chunk's arrival
// from the moment the request was written, and the final line's.
func (fc *fenderConn) stream(ctx context.Context, id int64, want int) ([]time.Duration, time.Duration, error) {
	at, fin, _, err := fc.streamChecked(ctx, id, want)
	return at, fin, err
}

func (fc *fenderConn) streamChecked(ctx context.Context, id int64, want int) ([]time.Duration, time.Duration, bool, error) {
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = fc.conn.SetDeadline(deadline)
	req := fmt.Sprintf(`{"id":%d,"upstream":"llm","path":"/v1/chat/completions","stream":true,`+
		`"body":{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}}`+"\n", id)
	start := time.Now()
	if _, err := io.WriteString(fc.conn, req); err != nil {
		return nil, 0, false, err
	}
	prefix := []byte(fmt.Sprintf(`{"id":%d,"chunk":`, id))
	out := make([]time.Duration, 0, want)
	for {
		line, err := fc.br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, 0, false, errors.New("answer line over 64 KB")
		}
		if err != nil {
			return nil, 0, false, err
		}
		now := time.Since(start)
		if bytes.HasPrefix(line, prefix) {
			out = append(out, now)
			continue
		}
		var sl streamLine
		if err := json.Unmarshal(line, &sl); err != nil {
			return nil, 0, false, fmt.Errorf("answer %q: %w", line, err)
		}
		if sl.OK == nil {
			return nil, 0, false, fmt.Errorf("unexpected line %q", line)
		}
		if !*sl.OK {
			return out, now, false, fmt.Errorf("stream failed: %s", bytes.TrimSpace(line))
		}
		ok := sl.Meta != nil && sl.Meta.Chunks == len(out) && len(out) == want
		return out, now, ok, nil
	}
}

// ---------------------------------------------------------------------------
// The fake upstream.

type upstream struct {
	url string
	srv *http.Server
	ln  net.Listener
}

func startUpstream(o options) (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &upstream{url: "http://" + ln.Addr().String(), ln: ln}
	u.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		// Events on a fixed schedule from the request's arrival, so that
		// a late write does not shift the ones after it.
		start := time.Now()
		for i := 0; i <= o.events; i++ {
			if !sleepUntil(r.Context(), start.Add(o.think+time.Duration(i)*o.interval)) {
				return
			}
			if i == o.events {
				io.WriteString(w, "data: [DONE]\n\n")
			} else {
				fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"+
					"\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d \"},\"finish_reason\":null}]}\n\n", i)
			}
			if rc.Flush() != nil {
				return
			}
		}
	})}
	go func() { _ = u.srv.Serve(ln) }()
	return u, nil
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (u *upstream) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if u.srv.Shutdown(ctx) != nil {
		u.srv.Close()
	}
}

// ---------------------------------------------------------------------------
// fender.

func buildFender(ctx context.Context, dir string) (string, error) {
	return fenderproc.Build(ctx, dir, "streambench")
}

// fenderProc is the running fender.
type fenderProc = fenderproc.Proc

func startFender(bin string, env map[string]string) (*fenderProc, error) {
	return fenderproc.Start("fender", fenderproc.FenderCmd(bin, env))
}

// waitReady waits until fender serves on sock.
func waitReady(ctx context.Context, sock string, p *fenderProc) error {
	return p.WaitReady(ctx, sock, func() error { return ping(sock) })
}

func ping(sock string) error {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, `{"id":0,"op":"ping"}`+"\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return err
	}
	if !bytes.Contains(line, []byte(`"ok":true`)) {
		return fmt.Errorf("ping answer %q", line)
	}
	return nil
}

func tail(s string, n int) string { return fenderproc.Tail(s, n) }
