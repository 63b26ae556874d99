package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// report is what the tool prints and writes as JSON: the median of each
// cell over the runs, and every run's own figures.
type report struct {
	Started       string         `json:"started"`
	RunsRequested int            `json:"runs_requested"`
	RunsCompleted int            `json:"runs_completed"`
	Quick         bool           `json:"quick"`
	GoVersion     string         `json:"go_version"`
	CPUs          int            `json:"cpus"`
	LoadAvgStart  string         `json:"loadavg_start"`
	LoadAvgEnd    string         `json:"loadavg_end"`
	FenderBinary  string         `json:"fender_binary"`
	FenderMetrics string         `json:"fender_metrics"`
	HAProxy       string         `json:"haproxy"`
	Settings      map[string]any `json:"settings"`
	Rows          []rowResult    `json:"rows"`
	Added         []addedRow     `json:"added_over_direct"`
	Scaling       []tputResult   `json:"scaling_fender_cache_hit"`
	Memory        memResult      `json:"memory_fender"`
	Targets       []targetResult `json:"targets"`
	Notes         []string       `json:"notes,omitempty"`
	WallSeconds   float64        `json:"wall_seconds"`
	PerRun        []runResult    `json:"per_run"`
}

// addedRow is the latency a proxy adds over direct HTTP.
type addedRow struct {
	Key  string  `json:"key"`
	Name string  `json:"name"`
	P50  float64 `json:"p50_us"`
	P99  float64 `json:"p99_us"`
}

type targetResult struct {
	Target string `json:"target"`
	Result string `json:"result"` // PASS, FAIL or SKIP
	Detail string `json:"detail"`
}

func (b *bench) newReport() *report {
	o := b.o
	r := &report{
		Started:       time.Now().Format(time.RFC3339),
		RunsRequested: o.runs,
		Quick:         o.quick,
		GoVersion:     runtime.Version(),
		CPUs:          runtime.NumCPU(),
		LoadAvgStart:  loadAvg(),
		FenderBinary:  b.fenderBin,
		FenderMetrics: "off (FENDER_METRICS_ADDR empty)",
		HAProxy:       b.haproxyVersion,
		Settings: map[string]any{
			"latency_requests":       o.latN,
			"latency_warmup":         o.latWarm,
			"latency_bound_seconds":  o.latCap.Seconds(),
			"throughput_conns":       o.conns,
			"throughput_seconds":     o.tputDur.Seconds(),
			"scaling_conns":          o.scaleAt,
			"scaling_seconds":        o.scaleDur.Seconds(),
			"memory_conns":           o.memConns,
			"memory_cache_entries":   o.memFill,
			"fender_max_cache_items": max(20000, 2*o.memFill),
		},
	}
	if o.metrics {
		r.FenderMetrics = "on (FENDER_METRICS_ADDR a free 127.0.0.1 port)"
	}
	if b.haproxySkip != "" {
		r.HAProxy = b.haproxySkip
	}
	return r
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	vs = slices.Clone(vs)
	slices.Sort(vs)
	if n := len(vs); n%2 == 0 {
		return (vs[n/2-1] + vs[n/2]) / 2
	}
	return vs[len(vs)/2]
}

// medianOf is the median of f over xs.
func medianOf[T any](xs []T, f func(T) float64) float64 {
	vs := make([]float64, 0, len(xs))
	for _, x := range xs {
		vs = append(vs, f(x))
	}
	return median(vs)
}

// medianPtr is the median of the non-nil f over xs, nil when all are nil.
func medianPtr[T any](xs []T, f func(T) *float64) *float64 {
	var vs []float64
	for _, x := range xs {
		if p := f(x); p != nil {
			vs = append(vs, *p)
		}
	}
	if len(vs) == 0 {
		return nil
	}
	m := median(vs)
	return &m
}

func (r *report) aggregate(runs []runResult) {
	r.PerRun, r.RunsCompleted = runs, len(runs)
	if len(runs) == 0 {
		return
	}
	for k, first := range runs[0].Rows {
		var rows []rowResult
		for _, run := range runs {
			if row := run.Rows[k]; row.Skipped == "" {
				rows = append(rows, row)
			}
		}
		if len(rows) == 0 {
			r.Rows = append(r.Rows, first)
			continue
		}
		r.Rows = append(r.Rows, rowResult{
			Key: first.Key, Name: first.Name,
			P50:       medianOf(rows, func(x rowResult) float64 { return x.P50 }),
			P99:       medianOf(rows, func(x rowResult) float64 { return x.P99 }),
			P999:      medianOf(rows, func(x rowResult) float64 { return x.P999 }),
			LatN:      int(medianOf(rows, func(x rowResult) float64 { return float64(x.LatN) })),
			RPS:       medianOf(rows, func(x rowResult) float64 { return x.RPS }),
			TputN:     int(medianOf(rows, func(x rowResult) float64 { return float64(x.TputN) })),
			LoadP50:   medianOf(rows, func(x rowResult) float64 { return x.LoadP50 }),
			LoadP99:   medianOf(rows, func(x rowResult) float64 { return x.LoadP99 }),
			Errors:    int(medianOf(rows, func(x rowResult) float64 { return float64(x.Errors) })),
			UpConns:   int(medianOf(rows, func(x rowResult) float64 { return float64(x.UpConns) })),
			PeakRSSMB: medianPtr(rows, func(x rowResult) *float64 { return x.PeakRSSMB }),
			CPUPer10k: medianPtr(rows, func(x rowResult) *float64 { return x.CPUPer10k }),
		})
	}
	for k, first := range runs[0].Scaling {
		var ps []tputResult
		for _, run := range runs {
			ps = append(ps, run.Scaling[k])
		}
		r.Scaling = append(r.Scaling, tputResult{
			Conns:    first.Conns,
			Requests: int(medianOf(ps, func(x tputResult) float64 { return float64(x.Requests) })),
			RPS:      medianOf(ps, func(x tputResult) float64 { return x.RPS }),
			P50:      medianOf(ps, func(x tputResult) float64 { return x.P50 }),
			P99:      medianOf(ps, func(x tputResult) float64 { return x.P99 }),
		})
	}
	ms := make([]memResult, len(runs))
	for i, run := range runs {
		ms[i] = run.Memory
	}
	r.Memory = memResult{
		IdleRSSMB:   medianOf(ms, func(x memResult) float64 { return x.IdleRSSMB }),
		ConnsRSSMB:  medianOf(ms, func(x memResult) float64 { return x.ConnsRSSMB }),
		LoadedRSSMB: medianOf(ms, func(x memResult) float64 { return x.LoadedRSSMB }),
		LoadedHWMMB: medianOf(ms, func(x memResult) float64 { return x.LoadedHWMMB }),
		Conns:       ms[0].Conns,
		FillOK:      int(medianOf(ms, func(x memResult) float64 { return float64(x.FillOK) })),
		Entries:     int(medianOf(ms, func(x memResult) float64 { return float64(x.Entries) })),
	}

	direct := r.row("direct")
	for _, key := range []string{"haproxy", "fender_pass", "fender_hit"} {
		if row := r.row(key); row != nil && row.Skipped == "" && direct != nil {
			r.Added = append(r.Added, addedRow{Key: key, Name: row.Name,
				P50: round(row.P50-direct.P50, 1), P99: round(row.P99-direct.P99, 1)})
		}
	}
	r.targets()
}

func (r *report) row(key string) *rowResult {
	for i := range r.Rows {
		if r.Rows[i].Key == key {
			return &r.Rows[i]
		}
	}
	return nil
}

func (r *report) added(key string) *addedRow {
	for i := range r.Added {
		if r.Added[i].Key == key {
			return &r.Added[i]
		}
	}
	return nil
}

// targets checks the ratios the project aims for.
func (r *report) targets() {
	check := func(target string, ok, measured bool, detail string) {
		res := "FAIL"
		switch {
		case !measured:
			res = "SKIP"
		case ok:
			res = "PASS"
		}
		r.Targets = append(r.Targets, targetResult{Target: target, Result: res, Detail: detail})
	}
	fa, ha := r.added("fender_pass"), r.added("haproxy")
	if fa != nil && ha != nil {
		check("fender pass-through added p50 <= haproxy added p50", fa.P50 <= ha.P50, true,
			fmt.Sprintf("%.1f µs vs %.1f µs", fa.P50, ha.P50))
		check("fender pass-through added p99 <= haproxy added p99", fa.P99 <= ha.P99, true,
			fmt.Sprintf("%.1f µs vs %.1f µs", fa.P99, ha.P99))
	} else {
		check("fender pass-through added p50 <= haproxy added p50", false, false, "no haproxy row")
		check("fender pass-through added p99 <= haproxy added p99", false, false, "no haproxy row")
	}
	fl, fp, fh, hp := r.row("floor"), r.row("fender_pass"), r.row("fender_hit"), r.row("haproxy")
	if fl != nil && fh != nil {
		check("fender cache hit p50 <= 2x floor p50", fh.P50 <= 2*fl.P50, true,
			fmt.Sprintf("%.1f µs vs 2 × %.1f = %.1f µs (%.2fx)", fh.P50, fl.P50, 2*fl.P50, fh.P50/fl.P50))
	}
	if fp != nil && hp != nil && hp.Skipped == "" {
		check(fmt.Sprintf("fender pass-through throughput@%d >= haproxy's", r.conns()), fp.RPS >= hp.RPS, true,
			fmt.Sprintf("%.0f vs %.0f req/s (%.2fx)", fp.RPS, hp.RPS, fp.RPS/hp.RPS))
	} else {
		check(fmt.Sprintf("fender pass-through throughput@%d >= haproxy's", r.conns()), false, false, "no haproxy row")
	}
	if fl != nil && fh != nil {
		check(fmt.Sprintf("fender cache-hit throughput@%d >= 0.5x floor's", r.conns()), fh.RPS >= 0.5*fl.RPS, true,
			fmt.Sprintf("%.0f vs 0.5 × %.0f = %.0f req/s (%.2fx)", fh.RPS, fl.RPS, 0.5*fl.RPS, fh.RPS/fl.RPS))
	}
	m := r.Memory
	check("fender RSS idle < 25 MB", m.IdleRSSMB < 25, m.IdleRSSMB > 0, fmt.Sprintf("%.1f MB", m.IdleRSSMB))
	check(fmt.Sprintf("fender RSS with %d conns + %d cache entries < 80 MB", m.Conns, r.Settings["memory_cache_entries"]),
		m.LoadedRSSMB < 80, m.LoadedRSSMB > 0, fmt.Sprintf("%.1f MB (peak %.1f MB, %d entries)", m.LoadedRSSMB, m.LoadedHWMMB, m.Entries))
}

func (r *report) conns() int {
	n, _ := r.Settings["throughput_conns"].(int)
	return n
}

func cell(p *float64, format string) string {
	if p == nil {
		return "—"
	}
	return fmt.Sprintf(format, *p)
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "fender bench: median of %d run(s)", r.RunsCompleted)
	if r.Quick {
		fmt.Fprint(w, " (-quick: short phases, figures are rough)")
	}
	fmt.Fprintf(w, "; %d CPUs, load average %s at start, %s at end (a shared machine is noisy)\n",
		r.CPUs, r.LoadAvgStart, r.LoadAvgEnd)
	fmt.Fprintf(w, "fender metrics %s; haproxy: %s\n", r.FenderMetrics, r.HAProxy)
	fmt.Fprintf(w, "latency: %v requests one after another after %v warm-up; throughput: %d connections × 1 in flight for %vs\n\n",
		r.Settings["latency_requests"], r.Settings["latency_warmup"], r.conns(), r.Settings["throughput_seconds"])

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tp50 µs\tp99 µs\tp99.9 µs\treq/s @%d\tpeak RSS MB\tCPU s/10k req\t\n", r.conns())
	for _, row := range r.Rows {
		if row.Skipped != "" {
			fmt.Fprintf(tw, "%s\tskipped\t\t\t\t\t\t\n", row.Name)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.0f\t%s\t%s\t\n", row.Name, row.P50, row.P99, row.P999, row.RPS,
			cell(row.PeakRSSMB, "%.1f"), cell(row.CPUPer10k, "%.3f"))
	}
	tw.Flush()
	fmt.Fprintln(w, "(floor: this tool's echo server in a process of its own; — : the server runs inside this tool's process, no separate RSS or CPU;")
	fmt.Fprintln(w, " peak RSS = VmHWM, CPU = utime+stime over the throughput phase, of the server's or proxy's processes)")
	for _, row := range r.Rows {
		if row.Skipped != "" {
			fmt.Fprintf(w, "%s: %s\n", row.Name, row.Skipped)
		}
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "added over direct\tp50 µs\tp99 µs\t\n")
	for _, a := range r.Added {
		fmt.Fprintf(tw, "%s\t%+.1f\t%+.1f\t\n", a.Name, a.P50, a.P99)
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "fender cache hit, scaling\tconns\treq/s\tp50 µs\tp99 µs\t\n")
	for _, s := range r.Scaling {
		fmt.Fprintf(tw, "\t%d\t%.0f\t%.1f\t%.1f\t\n", s.Conns, s.RPS, s.P50, s.P99)
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	m := r.Memory
	fmt.Fprintf(tw, "fender memory\tRSS MB\tpeak MB\t\n")
	fmt.Fprintf(tw, "idle, after start\t%.1f\t\t\n", m.IdleRSSMB)
	fmt.Fprintf(tw, "%d connections, cache empty\t%.1f\t\t\n", m.Conns, m.ConnsRSSMB)
	fmt.Fprintf(tw, "%d connections + %d cache entries\t%.1f\t%.1f\t\n", m.Conns, m.Entries, m.LoadedRSSMB, m.LoadedHWMMB)
	tw.Flush()

	fmt.Fprintln(w, "\ntargets (informational: the exit status is 0 either way)")
	for _, t := range r.Targets {
		fmt.Fprintf(w, "  %-4s  %s: %s\n", t.Result, t.Target, t.Detail)
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nnotes")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  - %s\n", strings.ReplaceAll(n, "\n", "\n    "))
		}
	}
	fmt.Fprintf(w, "\nwall time %.1fs\n", r.WallSeconds)
}
