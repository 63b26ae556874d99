// Command bench runs fender side by side with the alternatives an
// application could use instead, all over loopback and Unix sockets, and
// prints one comparison table (also written as JSON).
//
// Rows:
//
//   - floor: a raw Unix-socket NDJSON echo server inside this tool (reads a
//     line, writes a small fixed JSON answer line carrying the request's id;
//     one goroutine per connection). The cost of the transport alone.
//   - direct: keep-alive HTTP (net/http client, big idle pool) to the fake
//     upstream, an in-process net/http server on 127.0.0.1 answering a small
//     LLM-like JSON body with no delay.
//   - haproxy: Debian's haproxy on a Unix socket in front of the same
//     upstream (mode http, retries 3, keep-alive both sides, http-reuse
//     always); the client speaks HTTP/1.1 over the socket with keep-alive.
//   - fender pass-through: the real fender binary, "cache":"bypass".
//   - fender cache hit: the same call cached (one warm-up call first).
//
// Columns: p50/p99/p99.9 latency at one request in flight, throughput at 32
// connections with one request in flight each, peak RSS (VmHWM) and CPU
// seconds per 10,000 requests of the proxy process. Then the latency each
// proxy adds over direct, fender cache-hit scaling over 1..128 connections,
// fender's memory idle and with 1,000 connections and 10,000 cache entries,
// and the project's targets as PASS/FAIL lines (the exit status is 0 either
// way; it is 1 only when the benchmark itself cannot run).
//
// Run from the repository root:
//
//	go run ./scripts/bench [-runs 3] [-quick] [-json] [-out FILE] [-fender PATH] [-skip-haproxy]
//
// or scripts/bench.sh, which installs haproxy first when it is missing.
// Without -fender the binary is built from the module root into a temporary
// directory. Everything the tool starts it stops (SIGTERM to fender, haproxy
// killed) and its temporary directory is removed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"
)

type options struct {
	runs        int
	quick       bool
	jsonOut     bool
	out         string
	fender      string
	haproxy     string
	skipHAProxy bool
	metrics     bool
	floorInProc bool
	budget      time.Duration

	latN      int           // sequential requests measured per row
	latWarm   int           // sequential warm-up requests per row
	latCap    time.Duration // bound on one row's latency phase
	conns     int           // connections of the throughput column
	tputDur   time.Duration // throughput phase per row
	scaleDur  time.Duration // each scaling point other than 32
	scaleAt   []int         // scaling connection counts
	memConns  int           // open connections for the memory figure
	memFill   int           // distinct cached calls for the memory figure
	fillConns int           // connections that fill the cache at once
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == floorServeArg {
		if err := serveFloor(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "bench floor server:", err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	// The tool's own client and in-process servers share the machine with
	// the proxies under test; fewer collections mean less noise.
	debug.SetGCPercent(400)

	rep, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	b = append(b, '\n')
	if o.jsonOut {
		_, _ = os.Stdout.Write(b)
	} else {
		rep.print(os.Stdout)
	}
	if err := os.WriteFile(o.out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench: write the JSON report:", err)
		os.Exit(1)
	}
	if o.jsonOut {
		fmt.Fprintf(os.Stderr, "bench: wrote %s\n", o.out)
	} else {
		fmt.Printf("\nwrote %s\n", o.out)
	}
}

func parseFlags() (options, error) {
	var o options
	flag.IntVar(&o.runs, "runs", 3, "repeat the whole comparison N times and report the median of each cell")
	flag.BoolVar(&o.quick, "quick", false, "short smoke run (about 30s): 1 run, few requests, short phases")
	flag.BoolVar(&o.jsonOut, "json", false, "print the report as JSON on stdout instead of the tables")
	flag.StringVar(&o.out, "out", "", "write the JSON report here (default: a new file in the temp dir)")
	flag.StringVar(&o.fender, "fender", "", "fender binary to run (default: build it from the module root)")
	flag.StringVar(&o.haproxy, "haproxy", "", "haproxy binary (default: haproxy on PATH or /usr/sbin/haproxy)")
	flag.BoolVar(&o.skipHAProxy, "skip-haproxy", false, "leave out the haproxy row")
	flag.BoolVar(&o.floorInProc, "floor-inproc", false, "run the floor server inside the tool's own process (default: a child process, like the proxies)")
	flag.BoolVar(&o.metrics, "metrics", false, "run fender with its metrics endpoint on (default: FENDER_METRICS_ADDR empty, off)")
	flag.DurationVar(&o.budget, "budget", 0, "time bound: no further run starts when it would end past this; everything stops 20s after it (default 3m30s, quick 50s)")
	flag.IntVar(&o.latN, "n", 0, "sequential requests measured per row (default 20000, quick 2000)")
	flag.DurationVar(&o.tputDur, "d", 0, "throughput phase per row (default 3s, quick 500ms)")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })

	o.latWarm, o.latCap, o.scaleDur = 2000, 6*time.Second, 2*time.Second
	def := func(d *int, full, quick int) {
		if *d == 0 {
			*d = full
			if o.quick {
				*d = quick
			}
		}
	}
	defDur := func(d *time.Duration, full, quick time.Duration) {
		if *d == 0 {
			*d = full
			if o.quick {
				*d = quick
			}
		}
	}
	def(&o.latN, 20000, 2000)
	defDur(&o.tputDur, 3*time.Second, 500*time.Millisecond)
	defDur(&o.budget, 3*time.Minute+30*time.Second, 50*time.Second)
	if o.quick {
		if !set["runs"] {
			o.runs = 1
		}
		o.latWarm, o.latCap, o.scaleDur = 200, 3*time.Second, 300*time.Millisecond
	}
	o.conns, o.scaleAt = 32, []int{1, 8, 32, 128}
	o.memConns, o.memFill, o.fillConns = 1000, 10000, 32

	switch {
	case o.runs < 1 || o.runs > 50:
		return o, fmt.Errorf("-runs must be 1..50, got %d", o.runs)
	case o.latN < 10 || o.latN > 10_000_000:
		return o, fmt.Errorf("-n must be 10..10000000, got %d", o.latN)
	case o.tputDur < 100*time.Millisecond || o.tputDur > time.Minute:
		return o, fmt.Errorf("-d must be 100ms..1m, got %v", o.tputDur)
	case o.budget <= 0:
		return o, errors.New("-budget must be > 0")
	}
	if o.out == "" {
		o.out = filepath.Join(os.TempDir(), "fender-bench-"+time.Now().Format("20060102-150405")+".json")
	}
	return o, nil
}

// run measures o.runs comparisons (fewer when the time budget runs out)
// and returns the report with the median of each cell.
func run(o options) (*report, error) {
	t0 := time.Now()
	// A hard bound well past the budget, so that nothing can hang.
	ctx, cancel := context.WithDeadline(context.Background(), t0.Add(o.budget+20*time.Second))
	defer cancel()
	// Ctrl-C or SIGTERM: stop measuring; the deferred clean-up still runs.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	b, err := newBench(ctx, o)
	if err != nil {
		return nil, err
	}
	defer b.close()

	rep := b.newReport()
	var runs []runResult
	var last time.Duration
	for i := range o.runs {
		if i > 0 && time.Since(t0)+last > o.budget {
			rep.Notes = append(rep.Notes, fmt.Sprintf("stopped after %d of %d runs: the next would end past the %v time budget", i, o.runs, o.budget))
			break
		}
		start := time.Now()
		progress("run %d/%d", i+1, o.runs)
		r, err := b.oneRun(ctx)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && len(runs) > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("run %d was cut short by the hard time bound (-budget + 20s); reporting %d runs", i+1, len(runs)))
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("run %d: stopped (%v)", i+1, context.Cause(ctx))
		}
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", i+1, err)
		}
		runs = append(runs, r)
		last = time.Since(start)
		progress("run %d/%d done in %.1fs", i+1, o.runs, last.Seconds())
	}
	rep.aggregate(runs)
	rep.Notes = append(rep.Notes, b.notes...)
	rep.WallSeconds = round(time.Since(t0).Seconds(), 1)
	rep.LoadAvgEnd = loadAvg()
	return rep, nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}
