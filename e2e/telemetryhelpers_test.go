package e2e

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// metricsSettle bounds how long a metric may lag behind the answer that
	// caused it.
	metricsSettle = 5 * time.Second
	// metricsUpTimeout bounds how long the metrics server may take to answer
	// /healthz after fender starts.
	metricsUpTimeout = 10 * time.Second
)

// httpClient is the client for the metrics server and VictoriaMetrics; it
// keeps no idle connections, so that a server that goes away is noticed.
var httpClient = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// freeAddr is a 127.0.0.1 address that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// metricsEndpoint is fender's HTTP telemetry server.
type metricsEndpoint struct {
	Addr string
}

// startMetricsFender starts fender with env and its metrics server on a
// free port, and waits until both answer. A port taken by someone else in
// the meantime (fender exits 1) is retried with another.
func startMetricsFender(t testing.TB, env map[string]string) (*Fender, *metricsEndpoint) {
	t.Helper()
	return startWithMetrics(t, env, true)
}

// launchMetricsFender is startMetricsFender for configurations where a ping
// from this process cannot work (FENDER_ALLOWED_UIDS): it waits for
// /healthz only.
func launchMetricsFender(t testing.TB, env map[string]string) (*Fender, *metricsEndpoint) {
	t.Helper()
	return startWithMetrics(t, env, false)
}

func startWithMetrics(t testing.TB, env map[string]string, ping bool) (*Fender, *metricsEndpoint) {
	t.Helper()
	env = maps.Clone(env)
	for try := 1; ; try++ {
		m := &metricsEndpoint{Addr: freeAddr(t)}
		env["FENDER_METRICS_ADDR"] = m.Addr
		f := launchFender(t, socketPath(t), env)
		err := m.waitUp(f, ping)
		if err == nil {
			t.Cleanup(func() {
				f.closeClient()
				code := f.Stop()
				if t.Failed() {
					t.Logf("fender (exit %d) stderr:\n%s", code, tail(f.Stderr(), 16<<10))
				}
			})
			return f, m
		}
		f.Stop()
		if try < 3 && f.ExitCode() == 1 {
			continue // most likely the port was taken: try another
		}
		t.Fatalf("%v; fender stderr:\n%s", err, tail(f.Stderr(), 8<<10))
	}
}

// waitUp waits until fender answers a ping (when ping is set) and the
// metrics server answers /healthz with 200.
func (m *metricsEndpoint) waitUp(f *Fender, ping bool) error {
	deadline := time.Now().Add(metricsUpTimeout)
	for {
		if f.Exited() {
			return fmt.Errorf("fender exited with status %d before serving", f.ExitCode())
		}
		var err error
		if ping {
			err = pingOnce(f.Socket)
		}
		if err == nil {
			var code int
			code, _, err = m.get("/healthz")
			if err == nil && code != http.StatusOK {
				err = fmt.Errorf("status %d, want 200", code)
			}
			if err != nil {
				err = fmt.Errorf("metrics server on %s: GET /healthz: %w", m.Addr, err)
			}
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", metricsUpTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get fetches path from the metrics server.
func (m *metricsEndpoint) get(path string) (int, string, error) {
	return httpGet("http://" + m.Addr + path)
}

func httpGet(url string) (int, string, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// scrape fetches and parses /metrics; anything but a 200 with well-formed
// text fails the test.
func (m *metricsEndpoint) scrape(t testing.TB) scrape {
	t.Helper()
	code, body, err := m.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, error %v, want 200", code, err)
	}
	sc, err := parseExposition(body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return sc
}

// sample is one line of the Prometheus text format.
type sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// String is the sample's series in a canonical form, labels sorted.
func (s sample) String() string {
	keys := slices.Sorted(maps.Keys(s.Labels))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, s.Labels[k])
	}
	return s.Name + "{" + strings.Join(parts, ",") + "}"
}

// match reports whether s is named name and has every label pair in kv.
func (s sample) match(name string, kv []string) bool {
	if s.Name != name {
		return false
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if v, ok := s.Labels[kv[i]]; !ok || v != kv[i+1] {
			return false
		}
	}
	return true
}

// scrape is a parsed exposition.
type scrape struct {
	Text    string
	Samples []sample
}

// find lists the samples named name with the label pairs kv.
func (sc scrape) find(name string, kv ...string) []sample {
	var out []sample
	for _, s := range sc.Samples {
		if s.match(name, kv) {
			out = append(out, s)
		}
	}
	return out
}

// sum adds up the samples named name with the label pairs kv; 0 when none
// (a counter not yet created).
func (sc scrape) sum(name string, kv ...string) float64 {
	var n float64
	for _, s := range sc.find(name, kv...) {
		n += s.Value
	}
	return n
}

// has reports whether some sample is named name with the label pairs kv.
func (sc scrape) has(name string, kv ...string) bool { return len(sc.find(name, kv...)) > 0 }

// labelValues lists the distinct values of label among the samples named
// name with the label pairs kv, sorted.
func (sc scrape) labelValues(name, label string, kv ...string) []string {
	seen := map[string]bool{}
	for _, s := range sc.find(name, kv...) {
		if v, ok := s.Labels[label]; ok {
			seen[v] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// lines is the text of the samples named name, for failure messages.
func (sc scrape) lines(name string) string {
	var out []string
	for _, s := range sc.Samples {
		if s.Name == name {
			out = append(out, fmt.Sprintf("%s %g", s, s.Value))
		}
	}
	if len(out) == 0 {
		return "(no " + name + " series)"
	}
	return strings.Join(out, "\n")
}

// parseExposition parses the Prometheus text format: comments, then
// `name{label="value",...} value [timestamp]` lines. A malformed line or a
// series given twice is an error.
func parseExposition(text string) (scrape, error) {
	sc := scrape{Text: text}
	seen := map[string]int{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return sc, fmt.Errorf("line %d %q: %w", i+1, line, err)
		}
		key := s.String()
		if prev, dup := seen[key]; dup {
			return sc, fmt.Errorf("line %d: series %s already on line %d", i+1, key, prev)
		}
		seen[key] = i + 1
		sc.Samples = append(sc.Samples, s)
	}
	return sc, nil
}

func parseSample(line string) (sample, error) {
	s := sample{Labels: map[string]string{}}
	n := nameLen(line, true)
	if n == 0 {
		return s, errors.New("no metric name")
	}
	s.Name, line = line[:n], line[n:]
	if rest, ok := strings.CutPrefix(line, "{"); ok {
		var err error
		if line, err = parseLabels(rest, s.Labels); err != nil {
			return s, err
		}
	}
	fields := strings.Fields(line)
	if len(fields) < 1 || len(fields) > 2 || !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
		return s, errors.New("want a space, a value and an optional timestamp after the series")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, fmt.Errorf("value: %w", err)
	}
	s.Value = v
	if len(fields) == 2 {
		if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
			return s, fmt.Errorf("timestamp: %w", err)
		}
	}
	return s, nil
}

// parseLabels reads `name="value",...}` into into and returns what follows
// the closing brace.
func parseLabels(s string, into map[string]string) (string, error) {
	for {
		s = strings.TrimLeft(s, " ")
		if rest, ok := strings.CutPrefix(s, "}"); ok {
			return rest, nil
		}
		n := nameLen(s, false)
		if n == 0 {
			return "", fmt.Errorf("bad label name at %q", s)
		}
		name := s[:n]
		s = strings.TrimLeft(s[n:], " ")
		rest, ok := strings.CutPrefix(s, "=")
		if !ok {
			return "", fmt.Errorf("label %s: want =", name)
		}
		s = strings.TrimLeft(rest, " ")
		if !strings.HasPrefix(s, `"`) {
			return "", fmt.Errorf("label %s: want a quoted value", name)
		}
		var val strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] != '\\' {
				val.WriteByte(s[i])
				continue
			}
			i++
			if i == len(s) {
				break
			}
			switch s[i] {
			case 'n':
				val.WriteByte('\n')
			case '\\', '"':
				val.WriteByte(s[i])
			default:
				return "", fmt.Errorf("label %s: bad escape \\%c", name, s[i])
			}
		}
		if i >= len(s) {
			return "", fmt.Errorf("label %s: unterminated value", name)
		}
		if _, dup := into[name]; dup {
			return "", fmt.Errorf("label %s given twice", name)
		}
		into[name] = val.String()
		s = strings.TrimLeft(s[i+1:], " ")
		if rest, ok := strings.CutPrefix(s, ","); ok {
			s = rest
			continue
		}
		if !strings.HasPrefix(s, "}") {
			return "", fmt.Errorf("after label %s: want , or }", name)
		}
	}
}

// nameLen is the length of the metric (colons allowed) or label name that
// s starts with.
func nameLen(s string, metric bool) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case c == ':' && metric:
		case c >= '0' && c <= '9' && i > 0:
		default:
			return i
		}
	}
	return len(s)
}

// check is one expectation on a scrape; nil when it holds.
type check func(sc scrape) error

// deltaOf expects the sum of the series name{kv} to have moved by delta
// since before.
func deltaOf(before scrape, delta float64, name string, kv ...string) check {
	return func(sc scrape) error {
		was, now := before.sum(name, kv...), sc.sum(name, kv...)
		if now-was != delta {
			return fmt.Errorf("%s%s: got %+g (%g -> %g), want %+g", name, labelText(kv), now-was, was, now, delta)
		}
		return nil
	}
}

// valueOf expects the sum of the series name{kv} to be value, and at least
// one such series to exist.
func valueOf(value float64, name string, kv ...string) check {
	return func(sc scrape) error {
		if !sc.has(name, kv...) {
			return fmt.Errorf("%s%s: no such series, want %g; series of that name:\n%s", name, labelText(kv), value, sc.lines(name))
		}
		if got := sc.sum(name, kv...); got != value {
			return fmt.Errorf("%s%s: got %g, want %g", name, labelText(kv), got, value)
		}
		return nil
	}
}

// present expects a series name{kv} to exist.
func present(name string, kv ...string) check {
	return func(sc scrape) error {
		if !sc.has(name, kv...) {
			return fmt.Errorf("%s%s: no such series; series of that name:\n%s", name, labelText(kv), sc.lines(name))
		}
		return nil
	}
}

func labelText(kv []string) string {
	var parts []string
	for i := 0; i+1 < len(kv); i += 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// await scrapes until every check holds, at most metricsSettle, then
// reports each that still fails. It returns the last scrape.
func (m *metricsEndpoint) await(t testing.TB, checks ...check) scrape {
	t.Helper()
	deadline := time.Now().Add(metricsSettle)
	for {
		sc := m.scrape(t)
		var errs []error
		for _, c := range checks {
			if err := c(sc); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) == 0 {
			return sc
		}
		if time.Now().After(deadline) {
			for _, err := range errs {
				t.Error(err)
			}
			return sc
		}
		time.Sleep(25 * time.Millisecond)
	}
}
