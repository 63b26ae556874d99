// Command cachestress measures fender's cache and request coalescing under a
// skewed load. It starts a fake slow LLM upstream in process (loopback
// HTTP), runs fender against it on a temporary Unix socket, and sends N
// calls from C connections, each prompt drawn from a Zipf distribution over
// P distinct prompts, so that a few prompts are hot and most are rare. It
// reports hits, coalesced calls, the upstream calls saved, and latency
// percentiles of hits and misses.
//
// Run from the repository root:
//
//	go run ./scripts/cachestress [-fender PATH] [-n 10000] [-c 32] [-p 1000] [-latency 50ms] [-json]
//
// Without -fender it builds the binary from the module root into a
// temporary directory. Everything stays on loopback and Unix sockets; fender
// is stopped with SIGTERM and the temporary files are removed at the end.
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
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fender-sidecar/fender/scripts/internal/fenderproc"
)

type options struct {
	fender   string
	n        int
	conns    int
	prompts  int
	zipfS    float64
	latency  time.Duration
	timeout  time.Duration
	seed     uint64
	jsonOut  bool
	extraEnv string
}

func main() {
	var o options
	flag.StringVar(&o.fender, "fender", "", "fender binary to run (default: build it from the module root)")
	flag.IntVar(&o.n, "n", 10000, "requests to send")
	flag.IntVar(&o.conns, "c", 32, "concurrent connections")
	flag.IntVar(&o.prompts, "p", 1000, "distinct prompts")
	flag.Float64Var(&o.zipfS, "s", 1.1, "Zipf exponent (> 1)")
	flag.DurationVar(&o.latency, "latency", 50*time.Millisecond, "latency of the fake upstream")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "bound on the whole run")
	flag.Uint64Var(&o.seed, "seed", 1, "random seed")
	flag.BoolVar(&o.jsonOut, "json", false, "print the report as JSON")
	flag.StringVar(&o.extraEnv, "env", "", "extra fender environment, comma-separated KEY=VALUE")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "cachestress:", err)
		os.Exit(2)
	}
	rep, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachestress:", err)
		os.Exit(1)
	}
	if o.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		rep.print(os.Stdout)
	}
	if rep.Lost > 0 {
		os.Exit(1)
	}
}

func (o options) validate() error {
	switch {
	case o.n < 1 || o.n > 10_000_000:
		return fmt.Errorf("-n must be 1..10000000, got %d", o.n)
	case o.conns < 1 || o.conns > 1024:
		return fmt.Errorf("-c must be 1..1024, got %d", o.conns)
	case o.prompts < 1:
		return fmt.Errorf("-p must be >= 1, got %d", o.prompts)
	case o.zipfS <= 1:
		return fmt.Errorf("-s must be > 1, got %v", o.zipfS)
	case o.latency < 0 || o.timeout <= 0:
		return errors.New("-latency must be >= 0 and -timeout > 0")
	}
	return nil
}

// report is what a run measured.
type report struct {
	Requests      int             `json:"requests"`
	Sent          int             `json:"sent"`
	Answered      int             `json:"answered"`
	Lost          int             `json:"lost"`
	Errors        int             `json:"errors"`
	ErrorCodes    map[string]int  `json:"error_codes,omitempty"`
	Hits          int             `json:"hits"`
	HitRate       float64         `json:"hit_rate"`
	Coalesced     int             `json:"coalesced"`
	UpstreamCalls int64           `json:"upstream_calls"`
	CallsSaved    int64           `json:"calls_saved"`
	Hit           latency         `json:"latency_hit_ms"`
	Miss          latency         `json:"latency_miss_ms"`
	CoalescedLat  latency         `json:"latency_coalesced_ms"`
	WallSeconds   float64         `json:"wall_seconds"`
	Throughput    float64         `json:"requests_per_second"`
	Connections   int             `json:"connections"`
	Prompts       int             `json:"prompts"`
	UpstreamDelay string          `json:"upstream_latency"`
	FenderStats   json.RawMessage `json:"fender_stats,omitempty"`
}

// latency is the percentiles of one class of answers, in milliseconds.
type latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

func percentiles(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{}
	}
	slices.Sort(ds)
	at := func(q float64) float64 {
		i := int(q*float64(len(ds)-1) + 0.5)
		return float64(ds[i].Microseconds()) / 1000
	}
	return latency{Count: len(ds), P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: at(1)}
}

func (r *report) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "requests\tsent\tanswered\tlost\terrors\t\n")
	fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t\n", r.Requests, r.Sent, r.Answered, r.Lost, r.Errors)
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "hits\thit rate\tcoalesced\tupstream calls\tcalls saved\t\n")
	fmt.Fprintf(tw, "%d\t%.1f%%\t%d\t%d\t%d\t\n", r.Hits, 100*r.HitRate, r.Coalesced, r.UpstreamCalls, r.CallsSaved)
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "latency ms\tcount\tp50\tp95\tp99\tmax\t\n")
	for _, row := range []struct {
		name string
		l    latency
	}{{"hit", r.Hit}, {"miss", r.Miss}, {"  of which coalesced", r.CoalescedLat}} {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t\n", row.name, row.l.Count, row.l.P50, row.l.P95, row.l.P99, row.l.Max)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nwall %.2fs, %.0f req/s; %d connections, %d prompts (Zipf), upstream latency %s\n",
		r.WallSeconds, r.Throughput, r.Connections, r.Prompts, r.UpstreamDelay)
	if len(r.ErrorCodes) > 0 {
		fmt.Fprintf(w, "error codes: %v\n", r.ErrorCodes)
	}
}

func run(o options) (*report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "cachestress-")
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

	up, err := startUpstream(o.latency)
	if err != nil {
		return nil, err
	}
	defer up.close()

	sock := filepath.Join(dir, "f.sock")
	env := map[string]string{
		"FENDER_SOCKET":            sock,
		"FENDER_UPSTREAMS":         "llm=" + up.url,
		"FENDER_METRICS_ADDR":      "",
		"FENDER_LOG_LEVEL":         "warn",
		"FENDER_MAX_INFLIGHT":      fmt.Sprint(max(1024, 2*o.conns)),
		"FENDER_CACHE_MAX_ENTRIES": fmt.Sprint(max(10000, 2*o.prompts)),
	}
	for kv := range strings.SplitSeq(o.extraEnv, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[strings.TrimSpace(k)] = v
		}
	}
	fp, err := startFender(bin, env)
	if err != nil {
		return nil, err
	}
	defer fp.Stop(syscall.SIGTERM, 15*time.Second)
	if err := waitReady(ctx, sock, fp); err != nil {
		return nil, err
	}

	rep, err := load(ctx, o, sock)
	if err != nil {
		return nil, err
	}
	rep.UpstreamCalls = up.calls.Load()
	rep.CallsSaved = int64(o.n) - rep.UpstreamCalls
	rep.FenderStats = askStats(sock)
	if code := fp.Stop(syscall.SIGTERM, 15*time.Second); code != 0 {
		return rep, fmt.Errorf("fender exited with status %d after SIGTERM; stderr:\n%s", code, tail(fp.Output.String(), 4096))
	}
	return rep, nil
}

func buildFender(ctx context.Context, dir string) (string, error) {
	return fenderproc.Build(ctx, dir, "cachestress")
}

// upstream is the fake LLM: it answers each generate call after the
// latency with a JSON body echoing the prompt, and counts the calls.
type upstream struct {
	url   string
	delay time.Duration
	srv   *http.Server
	calls atomic.Int64
}

func startUpstream(delay time.Duration) (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the fake upstream: %w", err)
	}
	u := &upstream{url: "http://" + ln.Addr().String(), delay: delay}
	u.srv = &http.Server{Handler: http.HandlerFunc(u.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = u.srv.Serve(ln) }()
	return u, nil
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.calls.Add(1)
	var in struct {
		Model  string `json:"model"`
		Prompt string `json:"prompt"`
	}
	_ = json.NewDecoder(r.Body).Decode(&in)
	timer := time.NewTimer(u.delay)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"model": in.Model, "response": "echo: " + in.Prompt, "done": true,
	})
}

func (u *upstream) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = u.srv.Shutdown(ctx)
}

// fenderProc is the running fender.
type fenderProc = fenderproc.Proc

func startFender(bin string, env map[string]string) (*fenderProc, error) {
	return fenderproc.Start("fender", fenderproc.FenderCmd(bin, env))
}

// waitReady waits until fender serves on sock.
func waitReady(ctx context.Context, sock string, p *fenderProc) error {
	return p.WaitReady(ctx, sock, fenderproc.Dial(sock))
}

// answer is the part of a call's answer the tool reads.
type answer struct {
	ID    int64 `json:"id"`
	OK    bool  `json:"ok"`
	Error *struct {
		Code string `json:"code"`
	} `json:"error"`
	Meta *struct {
		Cached    bool `json:"cached"`
		Coalesced bool `json:"coalesced"`
	} `json:"meta"`
}

// result is one request's outcome.
type result struct {
	answered  bool
	ok        bool
	code      string
	cached    bool
	coalesced bool
	latency   time.Duration
}

func load(ctx context.Context, o options, sock string) (*report, error) {
	results := make([]result, o.n)
	var next, sent atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, o.conns)
	start := time.Now()
	for w := range o.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := worker(ctx, o, sock, uint64(w), &next, &sent, results); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	close(errs)

	rep := &report{
		Requests: o.n, Sent: int(sent.Load()), Connections: o.conns, Prompts: o.prompts,
		UpstreamDelay: o.latency.String(), WallSeconds: wall.Seconds(), ErrorCodes: map[string]int{},
	}
	var hit, miss, coal []time.Duration
	for _, r := range results[:min(int(next.Load()), o.n)] {
		if !r.answered {
			continue
		}
		rep.Answered++
		switch {
		case !r.ok:
			rep.Errors++
			rep.ErrorCodes[r.code]++
		case r.cached:
			rep.Hits++
			hit = append(hit, r.latency)
		default:
			miss = append(miss, r.latency)
			if r.coalesced {
				coal = append(coal, r.latency)
			}
		}
		if r.coalesced {
			rep.Coalesced++
		}
	}
	rep.Lost = rep.Sent - rep.Answered
	if rep.Answered > 0 {
		rep.HitRate = float64(rep.Hits) / float64(rep.Answered)
	}
	rep.Throughput = float64(rep.Answered) / wall.Seconds()
	rep.Hit, rep.Miss, rep.CoalescedLat = percentiles(hit), percentiles(miss), percentiles(coal)
	for err := range errs {
		fmt.Fprintln(os.Stderr, "cachestress: connection:", err)
	}
	if ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "cachestress: stopped at the -timeout of %v\n", o.timeout)
	}
	return rep, nil
}

// worker sends requests one at a time on its own connection until n are
// taken, each prompt drawn from a Zipf distribution.
func worker(ctx context.Context, o options, sock string, w uint64, next, sent *atomic.Int64, results []result) error {
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	rng := rand.New(rand.NewPCG(o.seed, w))
	zipf := rand.NewZipf(rng, o.zipfS, 1, uint64(o.prompts-1))
	br := bufio.NewReader(conn)
	var line []byte
	for ctx.Err() == nil {
		i := next.Add(1) - 1
		if i >= int64(o.n) {
			return nil
		}
		prompt := fmt.Sprintf("prompt %d", zipf.Uint64())
		req := map[string]any{
			"id": i, "upstream": "llm", "path": "/api/generate",
			"body": map[string]any{"model": "phi3", "prompt": prompt, "stream": false},
		}
		line, _ = json.Marshal(req)
		line = append(line, '\n')
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		t0 := time.Now()
		if _, err := conn.Write(line); err != nil {
			return fmt.Errorf("write request %d: %w", i, err)
		}
		sent.Add(1)
		resp, err := br.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("read answer %d: %w", i, err)
		}
		lat := time.Since(t0)
		var a answer
		if err := json.Unmarshal(resp, &a); err != nil || a.ID != i {
			return fmt.Errorf("answer to %d: %q", i, resp)
		}
		r := result{answered: true, ok: a.OK, latency: lat}
		if a.Error != nil {
			r.code = a.Error.Code
		}
		if a.Meta != nil {
			r.cached, r.coalesced = a.Meta.Cached, a.Meta.Coalesced
		}
		results[i] = r
	}
	return nil
}

// askStats is fender's stats answer, nil when it cannot be had.
func askStats(sock string) json.RawMessage {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(`{"id":1,"op":"stats"}` + "\n")); err != nil {
		return nil
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil || !json.Valid(line) {
		return nil
	}
	return json.RawMessage(bytes.TrimSpace(line))
}

func tail(s string, n int) string { return fenderproc.Tail(s, n) }
