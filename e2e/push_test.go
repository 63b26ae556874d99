package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// vmModule is the VictoriaMetrics single-node server the push tests run
// against; it is built once into the user cache when not found.
const vmModule = "github.com/VictoriaMetrics/VictoriaMetrics/app/victoria-metrics@v1.151.0"

const (
	// vmBuildTimeout bounds building VictoriaMetrics (20-40s when needed).
	vmBuildTimeout = 4 * time.Minute
	// vmStartTimeout bounds how long VictoriaMetrics may take to be healthy.
	vmStartTimeout = 30 * time.Second
	// pushWait bounds how long pushed series may take to show up.
	pushWait = 20 * time.Second
)

var vmBin struct {
	once sync.Once
	path string
	err  error
}

// victoriaBin finds the victoria-metrics binary: $FENDER_VM_BIN, then
// victoria-metrics on PATH, then the user cache, where it is built with go
// install when missing.
func victoriaBin(t testing.TB) string {
	t.Helper()
	vmBin.once.Do(func() { vmBin.path, vmBin.err = findOrBuildVictoria() })
	if vmBin.err != nil {
		t.Fatalf("victoria-metrics: %v", vmBin.err)
	}
	return vmBin.path
}

func findOrBuildVictoria() (string, error) {
	if p := os.Getenv("FENDER_VM_BIN"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("victoria-metrics"); err == nil {
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "fender-tools")
	bin := filepath.Join(dir, "victoria-metrics")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), vmBuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), "install", vmModule)
	cmd.Dir = os.TempDir() // outside this module: go.mod stays untouched
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", vmModule, err, out)
	}
	return bin, nil
}

// victoria is a running VictoriaMetrics single-node server.
type victoria struct {
	URL    string
	cmd    *exec.Cmd
	log    *logBuffer
	exited chan struct{}
}

// startVictoria runs VictoriaMetrics on a free port with a fresh data
// directory, waits for /health and stops it when the test ends.
func startVictoria(t testing.TB) *victoria {
	t.Helper()
	bin := victoriaBin(t)
	data := t.TempDir()
	addr := freeAddr(t)
	v := &victoria{URL: "http://" + addr, log: newLogBuffer(), exited: make(chan struct{})}
	v.cmd = exec.Command(bin,
		"-httpListenAddr="+addr,
		"-storageDataPath="+data,
		"-retentionPeriod=1d",
		"-search.latencyOffset=0s",
		"-search.disableCache",
	)
	v.cmd.Stdout, v.cmd.Stderr = v.log, v.log
	if err := v.cmd.Start(); err != nil {
		t.Fatalf("start victoria-metrics: %v", err)
	}
	go func() {
		_ = v.cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		_ = v.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-v.exited:
		case <-time.After(10 * time.Second):
			_ = v.cmd.Process.Kill()
			<-v.exited
		}
		if t.Failed() {
			t.Logf("victoria-metrics output:\n%s", tail(v.log.String(), 4<<10))
		}
	})
	deadline := time.Now().Add(vmStartTimeout)
	for {
		select {
		case <-v.exited:
			t.Fatalf("victoria-metrics exited: %s", tail(v.log.String(), 4<<10))
		default:
		}
		if code, _, err := httpGet(v.URL + "/health"); err == nil && code == http.StatusOK {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("victoria-metrics on %s not healthy after %v", addr, vmStartTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// importText posts Prometheus text to /api/v1/import/prometheus.
func (v *victoria) importText(t testing.TB, text string) {
	t.Helper()
	resp, err := httpClient.Post(v.URL+"/api/v1/import/prometheus", "text/plain", strings.NewReader(text))
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("import: status %d, want 2xx", resp.StatusCode)
	}
}

// vmSeries is one series of /api/v1/export.
type vmSeries struct {
	Metric     map[string]string `json:"metric"`
	Values     []float64         `json:"values"`
	Timestamps []int64           `json:"timestamps"`
}

// Last is the newest value of the series.
func (s vmSeries) Last() float64 {
	if len(s.Values) == 0 {
		return 0
	}
	best := 0
	for i, ts := range s.Timestamps {
		if ts >= s.Timestamps[best] {
			best = i
		}
	}
	return s.Values[best]
}

// export reads every series matching the series selector match.
func (v *victoria) export(t testing.TB, match string) []vmSeries {
	t.Helper()
	code, body, err := httpGet(v.URL + "/api/v1/export?" + url.Values{"match[]": {match}}.Encode())
	if err != nil || code != http.StatusOK {
		t.Fatalf("export %s: status %d, error %v (%s)", match, code, err, tail(body, 512))
	}
	var out []vmSeries
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var s vmSeries
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("export %s: line %q: %v", match, sc.Text(), err)
		}
		out = append(out, s)
	}
	return out
}

// self scrapes VictoriaMetrics' own /metrics.
func (v *victoria) self(t testing.TB) scrape {
	t.Helper()
	code, body, err := httpGet(v.URL + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("victoria-metrics /metrics: status %d, error %v", code, err)
	}
	sc, err := parseExposition(body)
	if err != nil {
		t.Fatalf("victoria-metrics /metrics: %v", err)
	}
	return sc
}

// findSeries lists the exported series that have every label pair in kv.
func findSeries(all []vmSeries, kv ...string) []vmSeries {
	var out []vmSeries
	for _, s := range all {
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if s.Metric[kv[i]] != kv[i+1] {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// TestPushToVictoriaMetrics has fender push to a real VictoriaMetrics
// every 200ms (with its metrics HTTP server off) and checks that
// fender_requests_total reaches it with the right upstream and code labels
// and values (SPEC 7, 9).
func TestPushToVictoriaMetrics(t *testing.T) {
	t.Parallel()
	v := startVictoria(t)
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":             upstreams("llm", u.URL),
		"FENDER_RETRIES":               "0",
		"FENDER_METRICS_PUSH_URL":      v.URL + "/api/v1/import/prometheus",
		"FENDER_METRICS_PUSH_INTERVAL": "200ms",
		"FENDER_BREAKER_FAILURES":      "1000",
	})
	for range 3 {
		wantOK(t, f.Call(t, callReq("llm", "/ok")))
	}
	wantError(t, f.Call(t, callReq("llm", "/status/404")), "upstream_status", false)

	want := map[string]float64{"ok": 3, "upstream_status": 1}
	deadline := time.Now().Add(pushWait)
	var all []vmSeries
	for {
		v.forceFlush(t)
		all = v.export(t, `{__name__="fender_requests_total"}`)
		got := map[string]float64{}
		for code := range want {
			for _, s := range findSeries(all, "upstream", "llm", "code", code) {
				got[code] += s.Last()
			}
		}
		if got["ok"] == want["ok"] && got["upstream_status"] == want["upstream_status"] {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fender_requests_total{upstream=\"llm\"} in VictoriaMetrics after %v: got %v, want %v; series: %+v",
				pushWait, got, want, all)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestScrapeIntoVictoriaMetrics posts fender's /metrics text to a real
// VictoriaMetrics: no row is invalid, every row is read, and a histogram
// bucket, a counter, a gauge and process_cpu_seconds_total read back with
// the scraped values (SPEC 9).
func TestScrapeIntoVictoriaMetrics(t *testing.T) {
	t.Parallel()
	v := startVictoria(t)
	u := newModelUpstream(t)
	env := cacheEnv(upstreams("llm", u.URL))
	f, m := startMetricsFender(t, env)
	wantMiss(t, f.Call(t, cacheReq("llm", "/a")))
	wantHit(t, f.Call(t, cacheReq("llm", "/a")))
	u.Set("/fail", Behavior{Status: 500})
	wantError(t, f.Call(t, cacheReq("llm", "/fail")), "upstream_status", true)

	sc := m.scrape(t)
	before := v.self(t)
	v.importText(t, sc.Text)
	rows := float64(len(sc.Samples))
	// Rows are counted by type: "prometheus" is /api/v1/import/prometheus.
	vmAfter := awaitVictoria(t, v,
		deltaOf(before, rows, "vm_protoparser_rows_read_total", "type", "prometheus"),
		deltaOf(before, rows, "vm_rows_inserted_total", "type", "prometheus"),
	)
	if err := deltaOf(before, 0, "vm_rows_invalid_total", "type", "prometheus")(vmAfter); err != nil {
		t.Errorf("fender's /metrics rejected by VictoriaMetrics: %v", err)
	}

	// Rows just inserted become searchable after a flush.
	v.forceFlush(t)
	checks := []struct {
		name string
		kv   []string
	}{
		{"fender_request_duration_seconds_bucket", []string{"upstream", "llm"}},
		{"fender_request_duration_seconds_count", []string{"upstream", "llm"}},
		{"fender_requests_total", []string{"upstream", "llm", "code", "ok"}},
		{"fender_cache_entries", nil},
		{"fender_cache_requests_total", []string{"result", "hit"}},
		{"process_cpu_seconds_total", nil},
	}
	deadline := time.Now().Add(pushWait)
	for {
		var errs []string
		for _, c := range checks {
			errs = append(errs, readBack(t, v, sc, c.name, c.kv...)...)
		}
		if len(errs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("series read back from VictoriaMetrics after %v:\n%s", pushWait, strings.Join(errs, "\n"))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readBack compares the series name{kv} of a fender scrape with those
// VictoriaMetrics exports, and describes each difference.
func readBack(t testing.TB, v *victoria, sc scrape, name string, kv ...string) []string {
	t.Helper()
	want := sc.find(name, kv...)
	if len(want) == 0 {
		return []string{fmt.Sprintf("%s%s: not in fender's /metrics:\n%s", name, labelText(kv), sc.lines(name))}
	}
	got := findSeries(v.export(t, fmt.Sprintf(`{__name__=%q}`, name)), kv...)
	var errs []string
	if len(got) != len(want) {
		errs = append(errs, fmt.Sprintf("%s%s: %d series in VictoriaMetrics, want %d (as scraped)", name, labelText(kv), len(got), len(want)))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			if sameLabels(w.Labels, g.Metric) {
				found = true
				if g.Last() != w.Value {
					errs = append(errs, fmt.Sprintf("%s: got %g in VictoriaMetrics, want %g", w, g.Last(), w.Value))
				}
			}
		}
		if !found {
			errs = append(errs, fmt.Sprintf("%s: not in VictoriaMetrics", w))
		}
	}
	return errs
}

// forceFlush makes rows VictoriaMetrics has just received searchable.
func (v *victoria) forceFlush(t testing.TB) {
	t.Helper()
	if code, body, err := httpGet(v.URL + "/internal/force_flush"); err != nil || code/100 != 2 {
		t.Logf("victoria-metrics /internal/force_flush: status %d, error %v (%s); polling instead", code, err, body)
	}
}

// sameLabels compares fender's labels with an exported series' (which adds
// __name__).
func sameLabels(labels, metric map[string]string) bool {
	if len(metric) != len(labels)+1 {
		return false
	}
	for k, v := range labels {
		if metric[k] != v {
			return false
		}
	}
	return true
}

// awaitVictoria polls VictoriaMetrics' own metrics until every check holds,
// at most metricsSettle, and reports those that do not.
func awaitVictoria(t testing.TB, v *victoria, checks ...check) scrape {
	t.Helper()
	deadline := time.Now().Add(metricsSettle)
	for {
		sc := v.self(t)
		var errs []error
		for _, c := range checks {
			if err := c(sc); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) == 0 || time.Now().After(deadline) {
			for _, err := range errs {
				t.Errorf("victoria-metrics: %v", err)
			}
			return sc
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pushFailure reports whether l is a warning or error about the push.
func pushFailure(l logLine) bool {
	lvl := l.Level()
	return (lvl == "warn" || lvl == "error") && strings.Contains(strings.ToLower(l.Raw), "push")
}

// TestPushTargetDown points the push at a closed port: calls are still
// answered at once, and the failure is logged, as JSON, mentioning the
// push (SPEC 9).
func TestPushTargetDown(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":             upstreams("llm", u.URL),
		"FENDER_METRICS_PUSH_URL":      refusedURL(t) + "/api/v1/import/prometheus",
		"FENDER_METRICS_PUSH_INTERVAL": "200ms",
	})
	waitLog(t, f, "the failing push at warn or error", pushFailure)
	for i := range 10 {
		var r Resp
		d := timed(func() { r = f.Call(t, callReq("llm", "/ok")) })
		wantOK(t, r)
		if d > 200*time.Millisecond+slack {
			t.Errorf("call %d with the push target down: took %v, want it answered at once", i, d)
		}
	}
	f.Client(t).Ping(t)
	if bad := nonJSONLines(f.Stderr()); len(bad) > 0 {
		t.Errorf("stderr lines that are not one JSON object (SPEC 9: zerolog JSON, one event per line): %q", bad[:min(len(bad), 5)])
	}
}
