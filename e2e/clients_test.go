package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The client libraries in clients/ are tested here against the real binary
// and a fake upstream: a small driver program in each language makes the
// calls and prints one JSON report, which the test checks.

// clientConcurrent is how many calls each driver has in flight at once.
const clientConcurrent = 50

// clientBigBody is the size of a body that reaches the client in many reads,
// so that partial lines are put back together.
const clientBigBody = 300_000

// clientRunTimeout bounds one driver run.
const clientRunTimeout = 60 * time.Second

// clientReport is what each driver prints.
type clientReport struct {
	Ping          bool                 `json:"ping"`
	HealthStatus  string               `json:"health_status"`
	HealthUps     []string             `json:"health_upstreams"`
	Concurrent    []clientCallResult   `json:"concurrent"`
	Errors        map[string]clientErr `json:"errors"`
	BigLen        int                  `json:"big_len"`
	StatsRequests int                  `json:"stats_requests"`
	Extra         map[string]any       `json:"extra"`
}

// clientCallResult is one of the concurrent calls: the delay it asked the
// upstream for and the one its answer reports.
type clientCallResult struct {
	Want     int `json:"want_ms"`
	Got      int `json:"got_ms"`
	Attempts int `json:"attempts"`
}

// clientErr is a failure as the client library raised or rejected it; Type
// is the exception class name.
type clientErr struct {
	Type      string `json:"type"`
	Code      string `json:"code"`
	Retryable bool   `json:"retryable"`
	Status    *int   `json:"status"`
}

func TestPythonClient(t *testing.T) {
	t.Parallel()
	python := needInterpreter(t, "python3", "apt-get install -y python3")
	rep := runClientDriver(t, "clients/python", "driver.py", pythonDriver, python)
	checkClientReport(t, rep)
	if got := rep.Extra["syntax_py38"]; got != true {
		t.Errorf("fender_client.py parses as Python 3.8: got %v, want true", got)
	}
	for _, name := range []string{"closed", "connect"} {
		if got := rep.Errors[name].Type; got != "FenderConnectionError" {
			t.Errorf("error %s: got exception type %q, want FenderConnectionError", name, got)
		}
	}
}

func TestNodeClient(t *testing.T) {
	t.Parallel()
	node := needInterpreter(t, "node", "apt-get install -y nodejs")
	rep := runClientDriver(t, "clients/node", "driver.js", nodeDriver, node)
	checkClientReport(t, rep)
}

// needInterpreter finds an interpreter on PATH. Without it the test fails
// when CI is set (CI must install it) and is skipped otherwise.
func needInterpreter(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found on PATH: CI must install it (%s) to test the client in clients/", name, install)
	}
	t.Skipf("%s not found on PATH; install it to test the client (%s)", name, install)
	return ""
}

// runClientDriver starts fender against a fake upstream, writes the driver
// source into a temporary directory and runs it with the client library's
// directory (relative to the repository root) and fender's socket in its
// environment. It returns the driver's report.
func runClientDriver(t *testing.T, libDir, file, src, interpreter string) clientReport {
	t.Helper()
	up := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", up.URL)})

	var rep clientReport
	execDriver(t, libDir, file, src, interpreter, f.Socket, &rep,
		"CLIENT_N="+strconv.Itoa(clientConcurrent),
		"CLIENT_BIG="+strconv.Itoa(clientBigBody))

	// The calls were really in flight together: the upstream saw many at once.
	if got := up.Hits("/slow"); got != clientConcurrent {
		t.Errorf("upstream /slow requests: got %d, want %d", got, clientConcurrent)
	}
	if got, want := up.MaxActive("/slow"), clientConcurrent/5; got < want {
		t.Errorf("upstream /slow requests in progress at once: got %d, want at least %d", got, want)
	}
	return rep
}

// execDriver writes the driver source into a temporary directory and runs
// it with the client library's directory (relative to the repository root)
// as CLIENT_LIB, fender's socket as FENDER_SOCKET and env in its
// environment, then decodes the JSON report it prints into rep.
func execDriver(t *testing.T, libDir, file, src, interpreter, sock string, rep any, env ...string) {
	t.Helper()
	lib, err := filepath.Abs(filepath.Join("..", libDir))
	if err != nil {
		t.Fatalf("client directory: %v", err)
	}
	dir := t.TempDir()
	driver := filepath.Join(dir, file)
	if err := os.WriteFile(driver, []byte(src), 0o644); err != nil {
		t.Fatalf("write driver: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clientRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, interpreter, driver)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"FENDER_SOCKET="+sock,
		"CLIENT_LIB="+lib,
		"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in clients/python
	)
	cmd.Env = append(cmd.Env, env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("%s still running after %v; stderr:\n%s", file, clientRunTimeout, stderr.String())
	}
	if err != nil {
		t.Fatalf("%s: %v; stdout:\n%s\nstderr:\n%s", file, err, out, stderr.String())
	}
	if err := json.Unmarshal(out, rep); err != nil {
		t.Fatalf("%s report %q: %v; stderr:\n%s", file, out, err, stderr.String())
	}
}

// checkClientReport checks what every driver must have seen.
func checkClientReport(t *testing.T, rep clientReport) {
	t.Helper()
	if !rep.Ping {
		t.Errorf("ping: got false, want true")
	}
	if rep.HealthStatus != "serving" {
		t.Errorf("health status: got %q, want serving", rep.HealthStatus)
	}
	if len(rep.HealthUps) != 1 || rep.HealthUps[0] != "up" {
		t.Errorf("health upstreams: got %v, want [up]", rep.HealthUps)
	}

	if got := len(rep.Concurrent); got != clientConcurrent {
		t.Errorf("concurrent answers: got %d, want %d", got, clientConcurrent)
	}
	for i, c := range rep.Concurrent {
		if c.Got != c.Want || c.Attempts != 1 {
			t.Errorf("concurrent call %d: got the answer for %dms with %d attempts, want its own (%dms) with 1",
				i, c.Got, c.Attempts, c.Want)
		}
	}

	wantErrs := map[string]clientErr{
		// a permanent upstream status: not retried, not retryable
		"status_404": {Code: "upstream_status", Retryable: false, Status: intPtr(404)},
		// a transient one, retries 0
		"status_503": {Code: "upstream_status", Retryable: true, Status: intPtr(503)},
		"unknown":    {Code: "unknown_upstream", Retryable: false},
		// a call on a closed client, and a socket nobody listens on
		"closed":  {Code: "connection", Retryable: true},
		"connect": {Code: "connection", Retryable: true},
	}
	for name, want := range wantErrs {
		got, ok := rep.Errors[name]
		if !ok {
			t.Errorf("error %s: not raised, want %+v", name, want)
			continue
		}
		if got.Code != want.Code || got.Retryable != want.Retryable || !sameStatus(got.Status, want.Status) {
			t.Errorf("error %s: got %+v (status %s), want %+v (status %s)",
				name, got, statusText(got.Status), want, statusText(want.Status))
		}
	}

	if rep.BigLen != clientBigBody {
		t.Errorf("big body (many reads, one line): got %d bytes, want %d", rep.BigLen, clientBigBody)
	}
	// 50 concurrent + 404 + 503 + unknown + big, at least.
	if want := clientConcurrent + 4; rep.StatsRequests < want {
		t.Errorf("stats requests: got %d, want at least %d", rep.StatsRequests, want)
	}
}

func intPtr(n int) *int { return &n }

func sameStatus(a, b *int) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func statusText(p *int) string {
	if p == nil {
		return "none"
	}
	return strconv.Itoa(*p)
}

// pythonDriver exercises clients/python/fender_client.py. Environment:
// FENDER_SOCKET, CLIENT_LIB (the library's directory), CLIENT_N, CLIENT_BIG.
const pythonDriver = `
import ast, json, os, sys, threading
sys.path.insert(0, os.environ["CLIENT_LIB"])
import fender_client
from fender_client import Client, FenderError

n = int(os.environ["CLIENT_N"])
big = int(os.environ["CLIENT_BIG"])
rep = {"errors": {}, "extra": {}}

with open(os.path.join(os.environ["CLIENT_LIB"], "fender_client.py")) as f:
    ast.parse(f.read(), feature_version=(3, 8))
rep["extra"]["syntax_py38"] = True

def record(name, fn):
    try:
        fn()
    except FenderError as e:
        rep["errors"][name] = {"type": type(e).__name__, "code": e.code,
                               "retryable": e.retryable, "status": e.status}

fender = Client()
rep["ping"] = fender.ping()
health = fender.health()
rep["health_status"] = health["status"]
rep["health_upstreams"] = sorted(health["upstreams"])

# n calls from n threads on one connection; later calls answer sooner, so
# the answers come back in the reverse order of the requests.
results = [None] * n
start = threading.Barrier(n)
def one(i):
    ms = 400 - 6 * i
    start.wait()
    a = fender.call("up", "/slow?ms=%d" % ms, method="GET", cache="bypass")
    results[i] = {"want_ms": ms, "got_ms": a["body"]["slept_ms"], "attempts": a["meta"]["attempts"]}
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
rep["concurrent"] = results

record("status_404", lambda: fender.call("up", "/status/404", method="GET", cache="bypass"))
record("status_503", lambda: fender.call("up", "/status/503", method="GET", cache="bypass", retries=0))
record("unknown", lambda: fender.call("nope", "/ok", {"x": 1}))
rep["big_len"] = len(fender.call("up", "/big?n=%d" % big, method="GET")["body"])
rep["stats_requests"] = fender.stats()["requests"]
fender.close()
record("closed", lambda: fender.ping())
record("connect", lambda: Client(os.path.join(os.path.dirname(os.environ["FENDER_SOCKET"]), "none.sock")))
print(json.dumps(rep))
`

// nodeDriver exercises clients/node/fender-client.js, with the same
// environment as pythonDriver.
const nodeDriver = `
'use strict';
const path = require('path');
const { Client, FenderError } = require(path.join(process.env.CLIENT_LIB, 'fender-client.js'));

const n = Number(process.env.CLIENT_N);
const big = Number(process.env.CLIENT_BIG);
const rep = { errors: {}, extra: {} };

async function record(name, fn) {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof FenderError)) throw e;
    rep.errors[name] = {
      type: e.name, code: e.code, retryable: e.retryable, status: e.status === undefined ? null : e.status,
    };
  }
}

(async () => {
  const fender = new Client();
  rep.ping = await fender.ping();
  const health = await fender.health();
  rep.health_status = health.status;
  rep.health_upstreams = Object.keys(health.upstreams).sort();

  // n calls at once on one connection; later calls answer sooner.
  rep.concurrent = await Promise.all(Array.from({ length: n }, async (_, i) => {
    const ms = 400 - 6 * i;
    const a = await fender.call('up', '/slow?ms=' + ms, undefined, { method: 'GET', cache: 'bypass' });
    return { want_ms: ms, got_ms: a.body.slept_ms, attempts: a.meta.attempts };
  }));

  await record('status_404', () => fender.call('up', '/status/404', undefined, { method: 'GET', cache: 'bypass' }));
  await record('status_503', () => fender.call('up', '/status/503', undefined, { method: 'GET', cache: 'bypass', retries: 0 }));
  await record('unknown', () => fender.call('nope', '/ok', { x: 1 }));
  rep.big_len = (await fender.call('up', '/big?n=' + big, undefined, { method: 'GET' })).body.length;
  rep.stats_requests = (await fender.stats()).requests;
  fender.close();
  await record('closed', () => fender.ping());
  const other = new Client(path.join(path.dirname(process.env.FENDER_SOCKET), 'none.sock'));
  await record('connect', () => other.ping());
  process.stdout.write(JSON.stringify(rep) + '\n');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
`

// ---------------------------------------------------------------------------
// Streaming (SPEC 6) through the clients: a driver in each language streams
// OpenAI-style SSE answers with Client.stream / client.stream against a fake
// streaming upstream and prints one JSON report.

// clientStreams is how many streams each stream driver has in flight at
// once, and clientStreamCalls how many ordinary calls it makes meanwhile.
const (
	clientStreams     = 5
	clientStreamCalls = 5
)

// clientStreamReport is what each stream driver prints.
type clientStreamReport struct {
	// Single is one stream; when its first chunk arrives the driver makes
	// an ordinary call to /release, which lets the upstream send the rest.
	Single clientStreamRun `json:"single"`
	// ReleasedAt is how many chunks had arrived when /release was called.
	ReleasedAt int `json:"released_at"`
	// Streams are the concurrent streams, by index; Calls the body "i" of
	// the ordinary calls made meanwhile, by index.
	Streams []clientStreamRun `json:"streams"`
	Calls   []int             `json:"calls"`
	// Broken is a stream the upstream resets after three events.
	Broken clientStreamRun `json:"broken"`
	// Failures are unexpected exceptions inside the driver.
	Failures []string `json:"failures"`
}

// clientStreamRun is one stream as a driver saw it: the chunks the iteration
// gave, the final answer the client made available, and the error the
// iteration raised (none for a stream that ended ok).
type clientStreamRun struct {
	Chunks     []string   `json:"chunks"`
	HasFinal   bool       `json:"has_final"`
	OK         bool       `json:"ok"`
	Status     *int       `json:"status"`
	HasBody    bool       `json:"has_body"`
	MetaChunks int        `json:"meta_chunks"`
	MetaBytes  int        `json:"meta_bytes"`
	Err        *clientErr `json:"error"`
	// FinalErr is, for Node, the error the final promise rejected with.
	FinalErr *clientErr `json:"final_error"`
}

// clientStreamWords are the words of concurrent stream i: its own, so that
// a chunk routed to the wrong stream shows.
func clientStreamWords(i int) []string {
	return []string{fmt.Sprintf("s%d-a", i), fmt.Sprintf(" s%d-b", i), fmt.Sprintf(" s%d-c", i), fmt.Sprintf(" s%d-d", i)}
}

var (
	clientSingleEvents = openAIEvents("Hel", "lo", ",", " wör", "ld", "!")
	clientBrokenEvents = openAIEvents("cut", " short", " here")
)

func TestPythonClientStream(t *testing.T) {
	t.Parallel()
	python := needInterpreter(t, "python3", "apt-get install -y python3")
	runClientStream(t, "clients/python", "stream_driver.py", pythonStreamDriver, python)
}

func TestNodeClientStream(t *testing.T) {
	t.Parallel()
	node := needInterpreter(t, "node", "apt-get install -y nodejs")
	rep := runClientStream(t, "clients/node", "stream_driver.js", nodeStreamDriver, node)
	// The final promise rejects with the error the iteration threw.
	if e, want := rep.Broken.FinalErr, rep.Broken.Err; e == nil || want == nil || e.Type != want.Type ||
		e.Code != want.Code || e.Retryable != want.Retryable || !sameStatus(e.Status, want.Status) {
		t.Errorf("broken stream: final rejected with %+v, want the iteration's error %+v", e, want)
	}
}

// runClientStream starts fender against a fake streaming upstream ("oai",
// stream_end "[DONE]"), runs the stream driver and checks its report.
func runClientStream(t *testing.T, libDir, file, src, interpreter string) clientStreamReport {
	t.Helper()
	release := make(chan struct{})
	var releaseOnce sync.Once
	// all is closed when the concurrent streams and calls have all reached
	// the upstream: each stream sends its first event, then waits for it,
	// and so does each call before its answer, so that the chunks of
	// different streams and the call answers interleave on the connection.
	all := make(chan struct{})
	var arrived atomic.Int64
	arrive := func() {
		if arrived.Add(1) == clientStreams+clientStreamCalls {
			close(all)
		}
	}
	u := newStreamUpstream(t, func(c *upCall) {
		switch c.R.URL.Path {
		case "/v1/chat/completions":
			c.StartSSE()
			c.Event(clientSingleEvents[0])
			if !c.Await(release) {
				return // the client held the first chunk back: a truncated stream
			}
			for _, e := range clientSingleEvents[1:] {
				if !c.Pause(10 * time.Millisecond) {
					return
				}
				c.Event(e)
			}
		case "/release":
			releaseOnce.Do(func() { close(release) })
			writeJSON(c.W, http.StatusOK, map[string]any{"released": true})
		case "/multi":
			i, _ := strconv.Atoi(c.R.URL.Query().Get("s"))
			events := openAIEvents(clientStreamWords(i)...)
			c.StartSSE()
			c.Event(events[0])
			arrive()
			if !c.Await(all) {
				return
			}
			for _, e := range events[1:] {
				if !c.Pause(5 * time.Millisecond) {
					return
				}
				c.Event(e)
			}
		case "/json":
			i, _ := strconv.Atoi(c.R.URL.Query().Get("i"))
			arrive()
			c.Await(all)
			writeJSON(c.W, http.StatusOK, map[string]any{"i": i})
		case "/break":
			c.SSE(clientBrokenEvents[:3], 10*time.Millisecond)
			c.Pause(20 * time.Millisecond)
			c.Reset(true)
		default:
			writeJSON(c.W, http.StatusNotFound, map[string]any{"error": "no such path"})
		}
	})
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams("oai", u.URL),
		"FENDER_POLICIES":  streamPolicies(map[string]map[string]any{"oai": {"stream_end": "[DONE]"}}),
	})

	var rep clientStreamReport
	execDriver(t, libDir, file, src, interpreter, f.Socket, &rep,
		"CLIENT_STREAMS="+strconv.Itoa(clientStreams),
		"CLIENT_CALLS="+strconv.Itoa(clientStreamCalls))
	if len(rep.Failures) > 0 {
		t.Errorf("driver failures: %q", rep.Failures)
	}

	// One stream: every event's data in order, [DONE] included, each chunk
	// given as it arrived (the upstream sent the rest only after the driver
	// reacted to the first), then the final answer.
	wantClientStreamOK(t, "single stream", rep.Single, clientSingleEvents)
	if rep.ReleasedAt != 1 {
		t.Errorf("single stream: %d chunks had arrived when the first was acted on, want 1 (chunks given as they arrive)",
			rep.ReleasedAt)
	}

	// Concurrent streams and calls on one client: each got its own.
	if len(rep.Streams) != clientStreams {
		t.Errorf("concurrent streams: got %d, want %d", len(rep.Streams), clientStreams)
	}
	for i, r := range rep.Streams {
		wantClientStreamOK(t, fmt.Sprintf("concurrent stream %d", i), r, openAIEvents(clientStreamWords(i)...))
	}
	if len(rep.Calls) != clientStreamCalls {
		t.Errorf("calls during the streams: got %d answers, want %d", len(rep.Calls), clientStreamCalls)
	}
	for i, got := range rep.Calls {
		if got != i {
			t.Errorf("call %d during the streams: got the answer of call %d", i, got)
		}
	}
	if got := u.PathHits("/multi"); got != clientStreams {
		t.Errorf("upstream /multi requests: got %d, want %d", got, clientStreams)
	}
	if got := arrived.Load(); got != clientStreams+clientStreamCalls {
		t.Errorf("streams and calls in flight together: got %d, want %d", got, clientStreams+clientStreamCalls)
	}

	// A stream that breaks after three events: the three chunks, then the
	// error, and the final answer (ok:false) with meta.chunks 3.
	b := rep.Broken
	if !slices.Equal(b.Chunks, clientBrokenEvents[:3]) {
		t.Errorf("broken stream chunks before the error:\n got %q\nwant %q", b.Chunks, clientBrokenEvents[:3])
	}
	if b.Err == nil || b.Err.Type != "FenderError" || b.Err.Code != "unavailable" || !b.Err.Retryable {
		t.Errorf("broken stream error: got %+v, want FenderError unavailable, retryable", b.Err)
	} else if !sameStatus(b.Err.Status, intPtr(200)) || !sameStatus(b.Status, intPtr(200)) {
		t.Errorf("broken stream status: error %s, final answer %s, want 200 (the upstream's, received)",
			statusText(b.Err.Status), statusText(b.Status))
	}
	if !b.HasFinal || b.OK || b.HasBody || b.MetaChunks != 3 || b.MetaBytes != chunkBytes(b.Chunks) {
		t.Errorf("broken stream final answer: got %+v, want ok:false, no body, meta.chunks 3, meta.bytes %d",
			b, chunkBytes(b.Chunks))
	}
	if got := u.PathHits("/break"); got != 1 {
		t.Errorf("upstream /break requests: got %d, want 1 (no retry after the first chunk)", got)
	}
	return rep
}

// wantClientStreamOK checks a stream that ended ok: its chunks are want, in
// order, and the final answer has status 200, no body, and meta.chunks and
// meta.bytes of those chunks.
func wantClientStreamOK(t *testing.T, what string, r clientStreamRun, want []string) {
	t.Helper()
	if r.Err != nil {
		t.Errorf("%s: raised %+v after %d chunks, want none", what, *r.Err, len(r.Chunks))
	}
	if !slices.Equal(r.Chunks, want) {
		t.Errorf("%s chunks:\n got %q\nwant %q", what, r.Chunks, want)
	}
	if !r.HasFinal || !r.OK || !sameStatus(r.Status, intPtr(200)) || r.HasBody {
		t.Errorf("%s final answer: got %+v (status %s), want ok, status 200, no body", what, r, statusText(r.Status))
	}
	if r.MetaChunks != len(want) || r.MetaBytes != chunkBytes(want) {
		t.Errorf("%s final meta: chunks %d, bytes %d; want %d and %d", what, r.MetaChunks, r.MetaBytes,
			len(want), chunkBytes(want))
	}
}

// chunkBytes is the UTF-8 length of the chunks, what meta.bytes counts.
func chunkBytes(chunks []string) int {
	n := 0
	for _, c := range chunks {
		n += len(c)
	}
	return n
}

// pythonStreamDriver exercises Client.stream of clients/python. Environment:
// FENDER_SOCKET, CLIENT_LIB, CLIENT_STREAMS, CLIENT_CALLS.
const pythonStreamDriver = `
import json, os, sys, threading, traceback
sys.path.insert(0, os.environ["CLIENT_LIB"])
from fender_client import Client, FenderError

ns = int(os.environ["CLIENT_STREAMS"])
nc = int(os.environ["CLIENT_CALLS"])
body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
rep = {"failures": [], "released_at": -1}

def err(e):
    return {"type": type(e).__name__, "code": e.code, "retryable": e.retryable, "status": e.status}

def run(s, on_chunk=None):
    """Iterate over stream s; its chunks, its final answer and any error."""
    out = {"chunks": []}
    try:
        for chunk in s:
            out["chunks"].append(chunk)
            if on_chunk:
                on_chunk(len(out["chunks"]))
    except FenderError as e:
        out["error"] = err(e)
    fin = s.final
    out["has_final"] = fin is not None
    if fin is not None:
        out.update(ok=fin.get("ok"), status=fin.get("status"), has_body="body" in fin,
                   meta_chunks=fin["meta"]["chunks"], meta_bytes=fin["meta"]["bytes"])
    return out

def guarded(fn):
    def wrapper(*args):
        try:
            fn(*args)
        except Exception:
            rep["failures"].append(traceback.format_exc())
    return wrapper

with Client() as fender:
    def release(n):
        if n == 1:
            fender.call("oai", "/release", method="GET", cache="bypass")
            rep["released_at"] = n
    rep["single"] = run(fender.stream("oai", "/v1/chat/completions", body), release)

    streams = [None] * ns
    calls = [None] * nc
    @guarded
    def one_stream(i):
        streams[i] = run(fender.stream("oai", "/multi?s=%d" % i, body))
    @guarded
    def one_call(i):
        calls[i] = fender.call("oai", "/json?i=%d" % i, method="GET", cache="bypass")["body"]["i"]
    threads = [threading.Thread(target=one_stream, args=(i,)) for i in range(ns)]
    threads += [threading.Thread(target=one_call, args=(i,)) for i in range(nc)]
    for t in threads: t.start()
    for t in threads: t.join()
    rep["streams"] = streams
    rep["calls"] = calls

    rep["broken"] = run(fender.stream("oai", "/break", body))
print(json.dumps(rep))
`

// nodeStreamDriver exercises client.stream of clients/node, with the same
// environment as pythonStreamDriver.
const nodeStreamDriver = `
'use strict';
const path = require('path');
const { Client, FenderError } = require(path.join(process.env.CLIENT_LIB, 'fender-client.js'));

const ns = Number(process.env.CLIENT_STREAMS);
const nc = Number(process.env.CLIENT_CALLS);
const body = { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'hi' }] };
const rep = { failures: [], released_at: -1 };

function err(e) {
  if (!(e instanceof FenderError)) throw e;
  return { type: e.name, code: e.code, retryable: e.retryable, status: e.status === undefined ? null : e.status };
}

// run iterates over stream s: its chunks, its final answer and any error.
async function run(s, onChunk) {
  const out = { chunks: [] };
  try {
    for await (const chunk of s) {
      out.chunks.push(chunk);
      if (onChunk) await onChunk(out.chunks.length);
    }
  } catch (e) {
    out.error = err(e);
  }
  let fin;
  try {
    fin = await s.final;
  } catch (e) {
    out.final_error = err(e);
    fin = e.answer;
  }
  out.has_final = fin !== undefined && fin !== null;
  if (out.has_final) {
    Object.assign(out, {
      ok: fin.ok, status: fin.status === undefined ? null : fin.status, has_body: 'body' in fin,
      meta_chunks: fin.meta.chunks, meta_bytes: fin.meta.bytes,
    });
  }
  return out;
}

(async () => {
  const fender = new Client();
  try {
    rep.single = await run(fender.stream('oai', '/v1/chat/completions', body), async (n) => {
      if (n === 1) {
        await fender.call('oai', '/release', undefined, { method: 'GET', cache: 'bypass' });
        rep.released_at = n;
      }
    });

    const streams = Array.from({ length: ns }, (_, i) => run(fender.stream('oai', '/multi?s=' + i, body)));
    const calls = Array.from({ length: nc }, async (_, i) =>
      (await fender.call('oai', '/json?i=' + i, undefined, { method: 'GET', cache: 'bypass' })).body.i);
    rep.streams = await Promise.all(streams);
    rep.calls = await Promise.all(calls);

    rep.broken = await run(fender.stream('oai', '/break', body));
  } catch (e) {
    rep.failures.push(String(e && e.stack || e));
  } finally {
    fender.close();
  }
  process.stdout.write(JSON.stringify(rep) + '\n');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
`
