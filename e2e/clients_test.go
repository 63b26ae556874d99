package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
		"FENDER_SOCKET="+f.Socket,
		"CLIENT_LIB="+lib,
		"CLIENT_N="+strconv.Itoa(clientConcurrent),
		"CLIENT_BIG="+strconv.Itoa(clientBigBody),
		"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in clients/python
	)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("%s still running after %v; stderr:\n%s", file, clientRunTimeout, stderr.String())
	}
	if err != nil {
		t.Fatalf("%s: %v; stdout:\n%s\nstderr:\n%s", file, err, out, stderr.String())
	}
	var rep clientReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%s report %q: %v; stderr:\n%s", file, out, err, stderr.String())
	}

	// The calls were really in flight together: the upstream saw many at once.
	if got := up.Hits("/slow"); got != clientConcurrent {
		t.Errorf("upstream /slow requests: got %d, want %d", got, clientConcurrent)
	}
	if got, want := up.MaxActive("/slow"), clientConcurrent/5; got < want {
		t.Errorf("upstream /slow requests in progress at once: got %d, want at least %d", got, want)
	}
	return rep
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
