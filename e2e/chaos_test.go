package e2e

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The chaos tests run the real binary under load and faults, bounded in
// count and time. They do not run in parallel with other tests: each
// takes the machine for a few seconds, and the others' timings stay sane.

// TestChaosManyConnections opens 2,000 connections at once, each with two
// calls in flight (one to a 100ms path of its own, one to a shared
// cacheable path that coalesces): every request is answered exactly once,
// and all of them ok since nothing is shed (SPEC 1, 4, 8).
func TestChaosManyConnections(t *testing.T) {
	const conns = 2000
	raiseNoFile(t, 3*conns+1000)
	u := newUpstream(t)
	f := startFender(t, map[string]string{
		"FENDER_UPSTREAMS":    upstreams("up", u.URL),
		"FENDER_MAX_INFLIGHT": "8192",
	})
	ta := newTally()
	lcs := make([]*loadConn, conns)
	start := time.Now()
	parallelFor(8, conns, func(i int) {
		lc, err := dialLoad(f.Socket, ta, 0)
		if err != nil {
			t.Errorf("dial connection %d: %v", i, err)
			return
		}
		lcs[i] = lc
	})
	t.Cleanup(func() {
		for _, lc := range lcs {
			if lc != nil {
				lc.Close()
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	dialed := time.Since(start)
	parallelFor(8, conns, func(i int) {
		own := fmt.Sprintf("c%d-own", i)
		shared := fmt.Sprintf("c%d-shared", i)
		lcs[i].write(own, chaosLine(own, "up", fmt.Sprintf("/slow?ms=100&c=%d", i), ""), true)
		line := fmt.Sprintf(`{"id":%q,"upstream":"up","path":"/slow?ms=100&shared=1"}`+"\n", shared)
		lcs[i].write(shared, line, true)
	})
	ok := ta.waitAnswered(20 * time.Second)
	elapsed := time.Since(start)
	counts := ta.counts()
	t.Logf("summary: conns=%d %s dial=%v total=%v upstream_slow_hits=%d",
		conns, counts, dialed.Round(time.Millisecond), elapsed.Round(time.Millisecond), u.Hits("/slow"))
	if !ok {
		t.Errorf("not every request answered within 20s")
	}
	counts.wantExact(t)
	if counts.Unsent != 0 {
		t.Errorf("writes that failed: got %d, want 0", counts.Unsent)
	}
	if got, want := counts.Codes["ok"], 2*conns; got != want {
		t.Errorf("ok answers: got %d, want %d (%s)", got, want, counts)
	}
	if got := u.Hits("/slow"); got < conns+1 {
		t.Errorf("upstream /slow requests: got %d, want at least %d", got, conns+1)
	}
	f.Dial(t).Ping(t)
}

// TestChaosStuckClients parks 200 connections that send requests (with
// answers far larger than the socket buffers) and never read, and 200 that
// connect and send nothing: another connection's pings and calls are still
// answered promptly; once they are all closed, fender's goroutines come
// back down to their starting level and fender_connections_active to 0
// (SPEC 1, 7, 9).
func TestChaosStuckClients(t *testing.T) {
	const writers, idlers, perWriter = 200, 200, 30
	raiseNoFile(t, 4*(writers+idlers)+1000)
	u := newUpstream(t)
	f, m := startMetricsFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})

	warm := f.Dial(t)
	wantOK(t, warm.Call(t, callReq("up", "/ok")))
	wantOK(t, warm.Call(t, Req{"upstream": "up", "path": "/big?n=32768"})) // cached for the writers
	warm.Close()
	if v, ok := pollGauge(t, m, "fender_connections_active", 10*time.Second, func(v float64) bool { return v == 0 }); !ok {
		t.Fatalf("fender_connections_active after the warm-up: got %g, want 0", v)
	}
	base := m.scrape(t).sum("go_goroutines")

	var stuck []net.Conn
	t.Cleanup(func() {
		for _, c := range stuck {
			c.Close()
		}
	})
	for i := range writers + idlers {
		c, err := net.DialTimeout("unix", f.Socket, 5*time.Second)
		if err != nil {
			t.Fatalf("dial stuck connection %d: %v", i, err)
		}
		stuck = append(stuck, c)
		if i >= writers {
			continue
		}
		var lines []byte
		for j := range perWriter {
			if j%3 == 0 {
				lines = fmt.Appendf(lines, `{"id":"w%d-%d","op":"ping"}`+"\n", i, j)
			} else {
				lines = fmt.Appendf(lines, `{"id":"w%d-%d","upstream":"up","path":"/big?n=32768"}`+"\n", i, j)
			}
		}
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(lines); err != nil {
			t.Fatalf("write on stuck connection %d: %v", i, err)
		}
	}
	if v, ok := pollGauge(t, m, "fender_connections_active", 10*time.Second, func(v float64) bool { return v == writers+idlers }); !ok {
		t.Errorf("fender_connections_active with the stuck clients: got %g, want %d", v, writers+idlers)
	}
	peak := m.scrape(t).sum("go_goroutines")

	probe := f.Dial(t)
	var worst time.Duration
	for i := range 20 {
		var r Resp
		d := timed(func() { r = probe.WaitFor(t, probe.Send(t, Req{"op": "ping"}), 3*time.Second) })
		worst = max(worst, d)
		if !r.OK {
			t.Errorf("ping %d beside the stuck clients: got %s, want ok", i, r.Raw)
		}
	}
	for i := range 5 {
		var r Resp
		d := timed(func() { r = probe.WaitFor(t, probe.Send(t, callReq("up", "/ok", "i", i)), 3*time.Second) })
		worst = max(worst, d)
		wantOK(t, r)
	}
	probe.Close()

	for _, c := range stuck {
		c.Close()
	}
	stuck = nil
	active, activeOK := pollGauge(t, m, "fender_connections_active", 15*time.Second, func(v float64) bool { return v == 0 })
	const allowance = 10 // idle upstream connections and the like
	final, finalOK := pollGauge(t, m, "go_goroutines", 15*time.Second, func(v float64) bool { return v <= base+allowance })
	t.Logf("summary: stuck=%d (writers=%d of %d requests, idle=%d) probe_worst=%v goroutines base=%g peak=%g final=%g connections_active=%g",
		writers+idlers, writers, perWriter, idlers, worst.Round(time.Millisecond), base, peak, final, active)
	if !activeOK {
		t.Errorf("fender_connections_active after closing every client: got %g, want 0", active)
	}
	if !finalOK {
		t.Errorf("go_goroutines after closing every client: got %g, want at most %g (started at %g)", final, base+allowance, base)
	}
}

// chaosEnv is the environment of the chaos-upstream tests.
func chaosEnv(url string) map[string]string {
	return map[string]string{
		"FENDER_UPSTREAMS":        upstreams("up", url),
		"FENDER_TIMEOUT":          "200ms",
		"FENDER_BREAKER_FAILURES": "5",
		"FENDER_BREAKER_COOLDOWN": "500ms",
	}
}

// chaosLoad is a set of client connections, each sending a call every 25ms
// with at most 2 in flight until halted. A request must be answered unless
// excused was set when it was written; none is written while paused.
type chaosLoad struct {
	ta       *tally
	lcs      []*loadConn
	stop     chan struct{}
	wg       sync.WaitGroup
	seq      atomic.Int64
	excused  atomic.Bool
	paused   atomic.Bool
	requests string // extra JSON fields of each call
}

func startChaosLoad(t testing.TB, sock string, clients int, extra string) *chaosLoad {
	t.Helper()
	l := &chaosLoad{ta: newTally(), stop: make(chan struct{}), requests: extra}
	for i := range clients {
		lc, err := dialLoad(sock, l.ta, 2)
		if err != nil {
			t.Fatalf("dial client %d: %v", i, err)
		}
		l.lcs = append(l.lcs, lc)
	}
	t.Cleanup(func() {
		l.halt()
		for _, lc := range l.lcs {
			lc.Close()
		}
	})
	for i, lc := range l.lcs {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(25 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-lc.done:
					return
				case <-tick.C:
				}
				if !lc.acquire(l.stop) {
					return
				}
				// Checked once a slot is free, just before the write.
				if l.paused.Load() {
					lc.release()
					continue
				}
				id := fmt.Sprintf("k%d-%d", i, l.seq.Add(1))
				lc.write(id, chaosLine(id, "up", "/chaos", l.requests), !l.excused.Load())
			}
		}()
	}
	return l
}

// halt stops the clients and waits for them.
func (l *chaosLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// chaosCodes are the answers a call may get from the chaos upstream.
var chaosCodes = map[string]bool{
	"ok": true, "timeout": true, "unavailable": true, "upstream_status": true, "circuit_open": true,
}

// TestChaosUpstream runs 50 clients for 10s against an upstream that
// cycles hang, reset, 503, ok, ok, with small timeouts and a breaker that
// opens after 5 failures and cools down for 500ms: every request is
// answered exactly once, never internal, and the breaker both opened and
// closed again (SPEC 1, 2, 3, 9).
func TestChaosUpstream(t *testing.T) {
	cu := newChaosUpstream(t)
	f, m := startMetricsFender(t, chaosEnv(cu.URL))
	const run = 10 * time.Second
	l := startChaosLoad(t, f.Socket, 50, `,"timeout_ms":1000,"retries":2`)
	time.Sleep(run) // the load runs for a fixed time
	l.halt()
	for i, lc := range l.lcs { // sentinels: a duplicate would show before them
		id := fmt.Sprintf("sentinel-%d", i)
		lc.write(id, fmt.Sprintf(`{"id":%q,"op":"ping"}`+"\n", id), true)
	}
	ok := l.ta.waitAnswered(10 * time.Second)
	counts := l.ta.counts()
	sc := m.scrape(t)
	opens := sc.sum("fender_breaker_transitions_total", "upstream", "up", "to", "open")
	closes := sc.sum("fender_breaker_transitions_total", "upstream", "up", "to", "closed")
	t.Logf("summary: clients=50 run=%v %s (incl. 50 sentinel pings) upstream hits=%d (hang=%d reset=%d 503=%d ok=%d) breaker to=open %g to=half_open %g to=closed %g",
		run, counts, cu.Hits(), cu.kinds[0].Load(), cu.kinds[1].Load(), cu.kinds[2].Load(), cu.kinds[3].Load()+cu.kinds[4].Load(),
		opens, sc.sum("fender_breaker_transitions_total", "upstream", "up", "to", "half_open"), closes)
	if !ok {
		t.Errorf("not every request answered within 10s of the end of the load")
	}
	counts.wantExact(t)
	for code, n := range counts.Codes {
		if !chaosCodes[code] {
			t.Errorf("answers with code %q: got %d, want none (%s)", code, n, counts)
		}
	}
	if opens == 0 || closes == 0 {
		t.Errorf("breaker transitions: to=open %g, to=closed %g, want both > 0\n%s",
			opens, closes, sc.lines("fender_breaker_transitions_total"))
	}
}

// TestChaosSIGTERM is TestChaosUpstream with SIGTERM after about 4s and a
// 2s drain, while each client also has one 800ms call in flight on a calm
// upstream: every request written before the signal is answered exactly
// once (ok, an error, or shutting_down), the 800ms calls ok within the
// drain, fender exits 0 and removes its socket. Requests written after the
// signal may go unread and new connections may be refused; those are
// counted apart (SPEC 8).
func TestChaosSIGTERM(t *testing.T) {
	cu := newChaosUpstream(t)
	env := chaosEnv(cu.URL)
	env["FENDER_UPSTREAMS"] = upstreams("up", cu.URL, "calm", cu.URL)
	env["FENDER_POLICIES"] = `{"calm":{"timeout":"5s"}}`
	env["FENDER_DRAIN_TIMEOUT"] = "2s"
	f := startFender(t, env)
	const clients = 50
	l := startChaosLoad(t, f.Socket, clients, `,"timeout_ms":1000,"retries":2`)
	time.Sleep(4 * time.Second) // the load runs before the signal
	// Pause the load and put one slow call behind each client's last
	// request: once all of them reach the upstream, fender has read every
	// line written so far (a line still in a socket buffer at the signal
	// may rightly never be read).
	l.paused.Store(true)
	for i, lc := range l.lcs {
		id := fmt.Sprintf("slow-%d", i)
		lc.write(id, chaosLine(id, "calm", "/slow", ""), true)
	}
	deadline := time.Now().Add(10 * time.Second)
	for cu.slow.Load() < clients && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := cu.slow.Load(); n < clients {
		t.Fatalf("slow calls at the upstream: got %d within 10s, want %d", n, clients)
	}
	l.excused.Store(true)
	signalled := time.Now()
	f.Signal(t, syscall.SIGTERM)
	l.paused.Store(false)

	var dialOK, dialRefused atomic.Int64
	dialDone := make(chan struct{})
	go func() {
		defer close(dialDone)
		for time.Since(signalled) < 3*time.Second && !f.Exited() {
			c, err := net.DialTimeout("unix", f.Socket, 500*time.Millisecond)
			if err != nil {
				dialRefused.Add(1)
			} else {
				dialOK.Add(1)
				c.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	code := f.WaitExit(t, stopTimeout)
	exitAfter := time.Since(signalled)
	l.halt()
	<-dialDone
	for _, lc := range l.lcs {
		<-lc.done // fender is gone: every reader sees EOF
	}
	counts := l.ta.counts()
	slowOK := 0
	for i := range clients {
		if c := l.ta.code(fmt.Sprintf("slow-%d", i)); c == "ok" {
			slowOK++
		} else {
			t.Errorf("800ms call slow-%d in flight at the signal: got %q, want ok within the 2s drain", i, c)
		}
	}
	t.Logf("summary: clients=%d %s; in flight at the signal: %d slow calls, %d ok; after the signal: written=%d answered=%d unanswered=%d, new connections ok=%d refused=%d; exit %d after %v",
		clients, counts, clients, slowOK, counts.Excused, counts.ExcusedAnswered, counts.Excused-counts.ExcusedAnswered,
		dialOK.Load(), dialRefused.Load(), code, exitAfter.Round(time.Millisecond))
	counts.wantExact(t)
	for c, n := range counts.Codes {
		if !chaosCodes[c] && c != "shutting_down" {
			t.Errorf("answers with code %q: got %d, want none (%s)", c, n, counts)
		}
	}
	if code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
	wantSocketGone(t, f.Socket)
}

// parallelFor runs fn(0..n-1) on workers goroutines.
func parallelFor(workers, n int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}
