package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/fender-sidecar/fender/scripts/internal/fenderproc"
)

// The NDJSON request lines after `{"id":ID`: the fender pass-through call
// (also sent to the floor) and the cacheable call of the cache-hit row.
var (
	passSuffix = []byte(`,"upstream":"llm","path":"/v1/x","body":` + reqBody + `,"cache":"bypass"}` + "\n")
	hitSuffix  = []byte(`,"upstream":"llm","path":"/v1/x","body":` + reqBody + "}\n")
)

// bench holds what lives across runs: the fender binary, the fake upstream,
// the floor server and the temporary directory.
type bench struct {
	o              options
	dir            string
	fenderBin      string
	haproxyBin     string
	haproxyVersion string
	haproxySkip    string
	up             *upstream
	floorPath      string
	floor          *floorServer // -floor-inproc
	floorProc      *proc        // default: this tool run again as the floor server
	seq            int
	notes          []string
	noted          map[string]bool
}

func newBench(ctx context.Context, o options) (b *bench, err error) {
	dir, err := os.MkdirTemp("", "fender-bench-")
	if err != nil {
		return nil, err
	}
	b = &bench{o: o, dir: dir, noted: map[string]bool{}}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if o.fender != "" {
		if b.fenderBin, err = filepath.Abs(o.fender); err != nil {
			return nil, err
		}
		if _, err := os.Stat(b.fenderBin); err != nil {
			return nil, fmt.Errorf("-fender: %w", err)
		}
	} else {
		progress("building fender")
		if b.fenderBin, err = buildFender(ctx, dir); err != nil {
			return nil, err
		}
	}
	b.haproxyBin, b.haproxyVersion, b.haproxySkip = findHAProxy(o)
	if b.haproxySkip != "" {
		progress("%s", b.haproxySkip)
	}
	if b.up, err = startUpstream(); err != nil {
		return nil, err
	}
	b.floorPath = filepath.Join(dir, "floor.sock")
	if o.floorInProc {
		b.floor, err = startFloor(b.floorPath)
	} else {
		b.floorProc, err = startFloorProc(ctx, b.floorPath)
	}
	if err != nil {
		return nil, err
	}
	return b, nil
}

// startFloorProc runs this tool's own binary again as the floor server, so
// that the floor, like fender and haproxy, is a process of its own: its
// answers pay the same wake-ups between processes, and its RSS and CPU can
// be read. It exits when its stdin closes (the tool ended) or on SIGTERM.
func startFloorProc(ctx context.Context, sock string) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("floor server: %w", err)
	}
	cmd := exec.Command(self, floorServeArg, sock)
	if _, err := cmd.StdinPipe(); err != nil {
		return nil, err
	}
	p, err := startProc("floor server", cmd)
	if err != nil {
		return nil, err
	}
	if err := p.WaitReady(ctx, sock, fenderproc.Dial(sock)); err != nil {
		p.Stop(syscall.SIGKILL, stopWait)
		return nil, err
	}
	return p, nil
}

func (b *bench) close() {
	if b.floor != nil {
		b.floor.close()
	}
	if b.floorProc != nil {
		b.floorProc.Stop(syscall.SIGTERM, stopWait)
	}
	if b.up != nil {
		b.up.close()
	}
	os.RemoveAll(b.dir)
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if !b.noted[s] {
		b.noted[s] = true
		b.notes = append(b.notes, s)
		progress("note: %s", s)
	}
}

func (b *bench) fenderEnv(sock string) map[string]string {
	env := map[string]string{
		"FENDER_SOCKET":            sock,
		"FENDER_UPSTREAMS":         "llm=" + b.up.url,
		"FENDER_METRICS_ADDR":      "",
		"FENDER_LOG_LEVEL":         "warn",
		"FENDER_CACHE_MAX_ENTRIES": strconv.Itoa(max(20000, 2*b.o.memFill)),
	}
	if b.o.metrics {
		env["FENDER_METRICS_ADDR"] = freeLoopbackAddr()
	}
	return env
}

func freeLoopbackAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:9464"
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startFender starts a fresh fender (each row its own process, so that its
// peak RSS and CPU are that row's).
func (b *bench) startFender(ctx context.Context) (*proc, string, error) {
	b.seq++
	sock := filepath.Join(b.dir, fmt.Sprintf("fender%d.sock", b.seq))
	p, err := startFender(ctx, b.fenderBin, b.fenderEnv(sock))
	return p, sock, err
}

func (b *bench) stopFender(p *proc) {
	if code := p.Stop(syscall.SIGTERM, stopWait); code != 0 {
		b.note("fender exited with status %d after SIGTERM; output:\n%s", code, tail(p.Output.String(), 2048))
	}
}

// runResult is one comparison.
type runResult struct {
	Rows    []rowResult  `json:"rows"`
	Scaling []tputResult `json:"scaling"`
	Memory  memResult    `json:"memory"`
}

// rowResult is one row of the main table.
type rowResult struct {
	Key       string   `json:"key"`
	Name      string   `json:"name"`
	Skipped   string   `json:"skipped,omitempty"`
	P50       float64  `json:"p50_us"`
	P99       float64  `json:"p99_us"`
	P999      float64  `json:"p999_us"`
	LatN      int      `json:"latency_requests"`
	RPS       float64  `json:"rps"`
	TputN     int      `json:"throughput_requests"`
	LoadP50   float64  `json:"p50_us_under_load"`
	LoadP99   float64  `json:"p99_us_under_load"`
	Errors    int      `json:"errors"`
	UpConns   int      `json:"upstream_conns_opened"` // by the row's two phases
	PeakRSSMB *float64 `json:"peak_rss_mb"`
	CPUPer10k *float64 `json:"cpu_s_per_10k"`
}

func (b *bench) oneRun(ctx context.Context) (runResult, error) {
	var r runResult
	add := func(row rowResult, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", row.Name, err)
		}
		r.Rows = append(r.Rows, row)
		return nil
	}

	floor := func() (worker, error) { return dialND(ctx, b.floorPath, passSuffix) }
	floorName, floorPids := "floor (NDJSON echo, in process)", []int(nil)
	if b.floorProc != nil {
		floorName, floorPids = "floor (NDJSON echo)", []int{b.floorProc.PID()}
	}
	if err := add(b.measure(ctx, "floor", floorName, floor, floorPids)); err != nil {
		return r, err
	}

	client := newHTTPClient("")
	direct := func() (worker, error) { return &httpWorker{client: client, url: b.up.url + "/v1/x"}, nil }
	err := add(b.measure(ctx, "direct", "direct (net/http)", direct, nil))
	client.CloseIdleConnections()
	if err != nil {
		return r, err
	}

	if err := add(b.haproxyRow(ctx)); err != nil {
		return r, err
	}
	row, _, err := b.fenderRow(ctx, false)
	if err := add(row, err); err != nil {
		return r, err
	}
	row, scaling, err := b.fenderRow(ctx, true)
	if err := add(row, err); err != nil {
		return r, err
	}
	r.Scaling = scaling
	if r.Memory, err = b.memoryPhase(ctx); err != nil {
		return r, fmt.Errorf("memory: %w", err)
	}
	return r, nil
}

// measure runs the latency and throughput phases of one row; pids are the
// proxy's processes (nil: in process, not measured).
func (b *bench) measure(ctx context.Context, key, name string, nw newWorker, pids []int) (rowResult, error) {
	row := rowResult{Key: key, Name: name}
	upConns := b.up.conns.Load()
	progress("  %s: latency", name)
	lat, err := latencyPhase(ctx, nw, b.o.latWarm, b.o.latN, b.o.latCap)
	if err != nil {
		return row, fmt.Errorf("latency: %w", err)
	}
	progress("  %s: throughput at %d connections", name, b.o.conns)
	tp, err := throughputPhase(ctx, nw, b.o.conns, b.o.tputDur, pids)
	if err != nil {
		return row, fmt.Errorf("throughput: %w", err)
	}
	row.P50, row.P99, row.P999, row.LatN = lat.P50, lat.P99, lat.P999, lat.N
	row.RPS, row.TputN, row.LoadP50, row.LoadP99 = tp.RPS, tp.Requests, tp.P50, tp.P99
	row.Errors = lat.Errors + tp.Errors
	row.UpConns = int(b.up.conns.Load() - upConns)
	if row.Errors > 0 {
		b.note("%s: %d answers were not ok", name, row.Errors)
	}
	if pids != nil {
		rss := round(memMB(pids, "VmHWM"), 1)
		row.PeakRSSMB = &rss
		if tp.Requests > 0 {
			cpu := round(tp.CPU/float64(tp.Requests)*10000, 3)
			row.CPUPer10k = &cpu
		}
	}
	return row, nil
}

func (b *bench) haproxyRow(ctx context.Context) (rowResult, error) {
	const key, name = "haproxy", "haproxy (unix socket)"
	if b.haproxySkip != "" {
		return rowResult{Key: key, Name: name, Skipped: b.haproxySkip}, nil
	}
	b.seq++
	dir := filepath.Join(b.dir, fmt.Sprintf("haproxy%d", b.seq))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return rowResult{Key: key, Name: name}, err
	}
	sock := filepath.Join(dir, "h.sock")
	p, err := startHAProxy(ctx, b.haproxyBin, dir, sock, b.up.addr)
	if err != nil {
		skip := "haproxy row skipped: " + err.Error()
		b.note("%s", skip)
		return rowResult{Key: key, Name: name, Skipped: skip}, nil
	}
	defer p.Stop(syscall.SIGKILL, stopWait)
	client := newHTTPClient(sock)
	defer client.CloseIdleConnections()
	nw := func() (worker, error) { return &httpWorker{client: client, url: "http://haproxy/v1/x"}, nil }
	return b.measure(ctx, key, name, nw, procTree(p.PID()))
}

// fenderRow measures fender on a fresh process: pass-through (bypass), or
// cache hits after one warm-up call, then how cache hits scale.
func (b *bench) fenderRow(ctx context.Context, hit bool) (rowResult, []tputResult, error) {
	key, name, suffix := "fender_pass", "fender pass-through", passSuffix
	if hit {
		key, name, suffix = "fender_hit", "fender cache hit", hitSuffix
	}
	p, sock, err := b.startFender(ctx)
	if err != nil {
		return rowResult{Key: key, Name: name}, nil, err
	}
	defer b.stopFender(p)
	// One call first: a cache hit needs it, and both rows check the answer.
	for i := range 2 {
		cached, err := probe(ctx, sock, suffix)
		if err != nil {
			return rowResult{Key: key, Name: name}, nil, fmt.Errorf("first call: %w", err)
		}
		if i == 1 && cached != hit {
			b.note("%s: the second call's meta.cached is %v", name, cached)
		}
	}
	nw := func() (worker, error) { return dialND(ctx, sock, suffix) }
	calls := b.up.calls.Load()
	row, err := b.measure(ctx, key, name, nw, []int{p.PID()})
	if err != nil || !hit {
		return row, nil, err
	}
	if n := b.up.calls.Load() - calls; n != 0 {
		b.note("%s: the upstream got %d calls during the cache-hit row (want 0)", name, n)
	}
	var scaling []tputResult
	for _, c := range b.o.scaleAt {
		if c == b.o.conns {
			scaling = append(scaling, tputResult{Conns: c, RPS: row.RPS, Requests: row.TputN, P50: row.LoadP50, P99: row.LoadP99})
			continue
		}
		progress("  %s: scaling, %d connections", name, c)
		tp, err := throughputPhase(ctx, nw, c, b.o.scaleDur, nil)
		if err != nil {
			return row, nil, fmt.Errorf("scaling at %d connections: %w", c, err)
		}
		scaling = append(scaling, tp)
	}
	return row, scaling, nil
}

// probe makes one call and reads its meta.cached; a failed call is an error.
func probe(ctx context.Context, sock string, suffix []byte) (bool, error) {
	w, err := dialND(ctx, sock, suffix)
	if err != nil {
		return false, err
	}
	defer w.close()
	line := append([]byte(`{"id":1`), suffix...)
	if _, err := w.c.Write(line); err != nil {
		return false, err
	}
	ans, err := w.br.ReadSlice('\n')
	if err != nil {
		return false, err
	}
	var a struct {
		OK   bool `json:"ok"`
		Meta struct {
			Cached bool `json:"cached"`
		} `json:"meta"`
	}
	if err := json.Unmarshal(ans, &a); err != nil || !a.OK {
		return false, fmt.Errorf("answer: %.300s", ans)
	}
	return a.Meta.Cached, nil
}
