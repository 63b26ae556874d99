package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// worker sends one request at a time on its own connection (NDJSON) or
// through a shared keep-alive pool (HTTP).
type worker interface {
	do(id int64) error
	close()
}

type newWorker func() (worker, error)

// answerError is an answer that came back but is not a success; the
// connection stays usable.
type answerError struct{ code string }

func (e *answerError) Error() string { return "answer not ok: " + e.code }

// ndWorker speaks NDJSON over a Unix socket: the request line is
// `{"id":ID` + suffix; the answer is matched by id.
type ndWorker struct {
	c      net.Conn
	br     *bufio.Reader
	buf    []byte
	suffix []byte
}

func dialND(ctx context.Context, sock string, suffix []byte) (*ndWorker, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return &ndWorker{c: c, br: bufio.NewReaderSize(c, 64<<10), suffix: suffix}, nil
}

func (w *ndWorker) do(id int64) error {
	w.buf = append(w.buf[:0], `{"id":`...)
	w.buf = strconv.AppendInt(w.buf, id, 10)
	w.buf = append(w.buf, w.suffix...)
	if _, err := w.c.Write(w.buf); err != nil {
		return err
	}
	line, err := w.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	got, ok, code, err := parseAnswer(line)
	switch {
	case err != nil:
		return err
	case got != id:
		return fmt.Errorf("answer id %d, want %d: %.200s", got, id, line)
	case !ok:
		return &answerError{code: code}
	}
	return nil
}

func (w *ndWorker) close() { w.c.Close() }

// batch pipelines one request line per id and reads the answers, matched
// by id in whatever order they come; it returns how many were ok.
func (w *ndWorker) batch(ids []int64, line func(dst []byte, id int64) []byte) (int, error) {
	w.buf = w.buf[:0]
	pending := make(map[int64]bool, len(ids))
	for _, id := range ids {
		w.buf = line(w.buf, id)
		pending[id] = true
	}
	if _, err := w.c.Write(w.buf); err != nil {
		return 0, err
	}
	okCount := 0
	for len(pending) > 0 {
		l, err := w.br.ReadSlice('\n')
		if err != nil {
			return okCount, err
		}
		id, ok, _, err := parseAnswer(l)
		if err != nil {
			return okCount, err
		}
		if !pending[id] {
			return okCount, fmt.Errorf("answer to an unknown id: %.200s", l)
		}
		delete(pending, id)
		if ok {
			okCount++
		}
	}
	return okCount, nil
}

var answerPrefix, okTrue = []byte(`{"id":`), []byte(`,"ok":true`)

// parseAnswer reads id and ok of an answer line: a fast path for the
// `{"id":N,"ok":true` that fender and the floor write, else encoding/json.
func parseAnswer(line []byte) (id int64, ok bool, code string, err error) {
	if rest, found := bytes.CutPrefix(line, answerPrefix); found {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			id = id*10 + int64(rest[i]-'0')
			i++
		}
		if i > 0 && i < 19 && bytes.HasPrefix(rest[i:], okTrue) {
			return id, true, "", nil
		}
	}
	var a struct {
		ID    *int64 `json:"id"`
		OK    bool   `json:"ok"`
		Error *struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &a); err != nil || a.ID == nil {
		return 0, false, "", fmt.Errorf("unreadable answer: %.200s", line)
	}
	if a.Error != nil {
		code = a.Error.Code
	}
	return *a.ID, a.OK, code, nil
}

// httpWorker posts the request body through a keep-alive client.
type httpWorker struct {
	client *http.Client
	url    string
}

// newHTTPClient is a keep-alive HTTP/1.1 client with a big idle pool;
// with sock set, every connection is to that Unix socket.
func newHTTPClient(sock string) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	if sock != "" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func (w *httpWorker) do(int64) error {
	req, err := http.NewRequest(http.MethodPost, w.url, bytes.NewReader([]byte(reqBody)))
	if err != nil {
		return err
	}
	req.Header["Content-Type"] = []string{"application/json"}
	resp, err := w.client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &answerError{code: "status " + strconv.Itoa(resp.StatusCode)}
	}
	return nil
}

func (w *httpWorker) close() {}

// latResult is the latency at one request in flight, in microseconds.
type latResult struct {
	N      int     `json:"n"`
	Errors int     `json:"errors"`
	P50    float64 `json:"p50_us"`
	P99    float64 `json:"p99_us"`
	P999   float64 `json:"p999_us"`
}

// latencyPhase sends warm then n requests one after another on one
// connection, timing the n, for at most bound.
func latencyPhase(ctx context.Context, nw newWorker, warm, n int, bound time.Duration) (latResult, error) {
	w, err := nw()
	if err != nil {
		return latResult{}, err
	}
	defer w.close()
	var r latResult
	ds := make([]time.Duration, 0, n)
	end := time.Now().Add(bound)
	for i := range warm + n {
		if ctx.Err() != nil || (i >= warm && i%64 == 0 && time.Now().After(end)) {
			break
		}
		t0 := time.Now()
		err := w.do(int64(i + 1))
		d := time.Since(t0)
		var ae *answerError
		switch {
		case errors.As(err, &ae):
			r.Errors++
		case err != nil:
			return r, fmt.Errorf("request %d: %w", i+1, err)
		case i >= warm:
			ds = append(ds, d)
		}
	}
	r.N = len(ds)
	r.P50, r.P99, r.P999 = pct(ds, 0.50), pct(ds, 0.99), pct(ds, 0.999)
	return r, nil
}

// tputResult is a throughput phase: conns connections, one request in
// flight on each, for a fixed time.
type tputResult struct {
	Conns    int     `json:"conns"`
	Seconds  float64 `json:"seconds"`
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	RPS      float64 `json:"rps"`
	P50      float64 `json:"p50_us"`
	P99      float64 `json:"p99_us"`
	CPU      float64 `json:"cpu_seconds"` // of pids over the phase
}

func throughputPhase(ctx context.Context, nw newWorker, conns int, d time.Duration, pids []int) (tputResult, error) {
	workers := make([]worker, 0, conns)
	defer func() {
		for _, w := range workers {
			w.close()
		}
	}()
	for range conns {
		w, err := nw()
		if err != nil {
			return tputResult{}, fmt.Errorf("connection %d of %d: %w", len(workers)+1, conns, err)
		}
		workers = append(workers, w)
	}
	var (
		stop           atomic.Bool
		ready, done    sync.WaitGroup
		start          = make(chan struct{})
		lats           = make([][]time.Duration, conns)
		errCounts      = make([]int, conns)
		fatal          = make([]error, conns)
		perWorkerGuess = max(1024, int(d.Seconds()*60000)/conns)
	)
	for i, w := range workers {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			id := int64(0)
			for range 3 { // warm the connection (and the HTTP pool)
				id++
				if err := w.do(id); err != nil {
					fatal[i] = fmt.Errorf("warm-up: %w", err)
					ready.Done()
					return
				}
			}
			ready.Done()
			<-start
			l := make([]time.Duration, 0, perWorkerGuess)
			var ae *answerError
			for !stop.Load() {
				id++
				t0 := time.Now()
				err := w.do(id)
				switch {
				case errors.As(err, &ae):
					errCounts[i]++
				case err != nil:
					fatal[i] = err
					lats[i] = l
					return
				default:
					l = append(l, time.Since(t0))
				}
			}
			lats[i] = l
		}()
	}
	ready.Wait()
	cpu0 := cpuSeconds(pids)
	t0 := time.Now()
	close(start)
	timer := time.NewTimer(d)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	stop.Store(true)
	done.Wait()
	elapsed := time.Since(t0)
	r := tputResult{Conns: conns, Seconds: round(elapsed.Seconds(), 3), CPU: cpuSeconds(pids) - cpu0}
	if err := errors.Join(fatal...); err != nil {
		return r, err
	}
	all := slices.Concat(lats...)
	for _, n := range errCounts {
		r.Errors += n
	}
	r.Requests = len(all)
	r.RPS = round(float64(r.Requests)/elapsed.Seconds(), 0)
	r.P50, r.P99 = pct(all, 0.50), pct(all, 0.99)
	return r, nil
}

// pct is the q-quantile (nearest rank) of ds in microseconds; it sorts ds.
func pct(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	if !slices.IsSorted(ds) {
		slices.Sort(ds)
	}
	i := int(q*float64(len(ds))+0.999999) - 1
	i = min(max(i, 0), len(ds)-1)
	return round(float64(ds[i].Nanoseconds())/1000, 1)
}

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if v < 0 {
		return -float64(int64(-v*p+0.5)) / p
	}
	return float64(int64(v*p+0.5)) / p
}
