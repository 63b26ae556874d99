package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// tally counts requests and their answers across many connections: every
// request id is registered before it is written, and every answer line is
// matched against the registered ids. It is safe for concurrent use.
type tally struct {
	mu      sync.Mutex
	sent    map[string]bool // id -> must be answered (written before a cut-off)
	got     map[string]int  // id -> answers
	codes   map[string]int  // "ok" or the error code, per first answer
	codeOf  map[string]string
	stray   []string // answers to ids never sent
	bad     []string // answer lines that are not JSON objects
	unsent  int      // requests whose write failed
	changed chan struct{}
}

func newTally() *tally {
	return &tally{
		sent:    make(map[string]bool),
		got:     make(map[string]int),
		codes:   make(map[string]int),
		codeOf:  make(map[string]string),
		changed: make(chan struct{}),
	}
}

// register records id as about to be written; must says whether it has
// to be answered.
func (ta *tally) register(id string, must bool) {
	ta.mu.Lock()
	ta.sent[id] = must
	ta.mu.Unlock()
}

// failed records that the write of id failed: it was never sent.
func (ta *tally) failed(id string) {
	ta.mu.Lock()
	delete(ta.sent, id)
	ta.unsent++
	ta.mu.Unlock()
}

// answer records one answer line; it reports whether this was the first
// answer to a request that was sent.
func (ta *tally) answer(line []byte) bool {
	var a struct {
		ID    json.RawMessage `json:"id"`
		OK    bool            `json:"ok"`
		Error *RespError      `json:"error"`
		Chunk *string         `json:"chunk"`
	}
	ta.mu.Lock()
	defer ta.mu.Unlock()
	defer func() {
		close(ta.changed)
		ta.changed = make(chan struct{})
	}()
	if err := json.Unmarshal(line, &a); err != nil {
		ta.bad = append(ta.bad, string(line))
		return false
	}
	if a.Chunk != nil {
		return false
	}
	id := idKey(a.ID)
	if _, ok := ta.sent[id]; !ok {
		ta.stray = append(ta.stray, strings.TrimSpace(string(line)))
		return false
	}
	ta.got[id]++
	if ta.got[id] > 1 {
		return false
	}
	code := "ok"
	if !a.OK {
		code = "error-without-code"
		if a.Error != nil {
			code = a.Error.Code
		}
	}
	ta.codes[code]++
	ta.codeOf[id] = code
	return true
}

// code is the code of the first answer to id (as written), "" when none.
func (ta *tally) code(id string) string {
	key, _ := json.Marshal(id)
	ta.mu.Lock()
	defer ta.mu.Unlock()
	return ta.codeOf[string(key)]
}

// tallyCounts is a snapshot of a tally.
type tallyCounts struct {
	Sent, Answered, Lost, Duplicates, Stray, Bad, Unsent int
	Excused, ExcusedAnswered                             int
	Codes                                                map[string]int
}

func (ta *tally) counts() tallyCounts {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	c := tallyCounts{Stray: len(ta.stray), Bad: len(ta.bad), Unsent: ta.unsent, Codes: maps.Clone(ta.codes)}
	for id, must := range ta.sent {
		n := ta.got[id]
		if !must {
			c.Excused++
			if n > 0 {
				c.ExcusedAnswered++
			}
		} else {
			c.Sent++
			if n == 0 {
				c.Lost++
			}
		}
		if n > 0 {
			c.Answered++
		}
		if n > 1 {
			c.Duplicates += n - 1
		}
	}
	return c
}

// String is the one-line summary the chaos tests log.
func (c tallyCounts) String() string {
	keys := slices.Sorted(maps.Keys(c.Codes))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, c.Codes[k])
	}
	return fmt.Sprintf("sent=%d answered=%d lost=%d duplicates=%d stray=%d badlines=%d writefail=%d codes={%s}",
		c.Sent+c.Excused, c.Answered, c.Lost, c.Duplicates, c.Stray, c.Bad, c.Unsent, strings.Join(parts, " "))
}

// waitAnswered waits until every request that must be answered has been,
// at most d.
func (ta *tally) waitAnswered(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		ta.mu.Lock()
		ch, done := ta.changed, true
		for id, must := range ta.sent {
			if must && ta.got[id] == 0 {
				done = false
				break
			}
		}
		ta.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}

// wantExact fails the test unless every request that had to be answered
// was answered exactly once, with no stray or malformed answer.
func (c tallyCounts) wantExact(t testing.TB) {
	t.Helper()
	if c.Lost != 0 {
		t.Errorf("lost requests: got %d, want 0 (%s)", c.Lost, c)
	}
	if c.Duplicates != 0 {
		t.Errorf("duplicate answers: got %d, want 0 (%s)", c.Duplicates, c)
	}
	if c.Stray != 0 || c.Bad != 0 {
		t.Errorf("answers to unknown ids: %d, lines that are not JSON: %d, want 0 (%s)", c.Stray, c.Bad, c)
	}
}

// loadConn is a lightweight client connection for load tests: the caller
// writes request lines, one goroutine reads answers into a tally. It keeps
// no per-request channel, so thousands of them stay cheap.
type loadConn struct {
	conn net.Conn
	ta   *tally
	wmu  sync.Mutex
	// slots, when not nil, bounds the requests in flight on the connection:
	// send takes a slot, the first answer to a request gives it back.
	slots chan struct{}
	done  chan struct{}
}

func dialLoad(sock string, ta *tally, inflight int) (*loadConn, error) {
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	lc := &loadConn{conn: conn, ta: ta, done: make(chan struct{})}
	if inflight > 0 {
		lc.slots = make(chan struct{}, inflight)
	}
	go lc.readLoop()
	return lc, nil
}

func (lc *loadConn) readLoop() {
	defer close(lc.done)
	br := bufio.NewReader(lc.conn)
	for {
		line, err := br.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			if lc.ta.answer(line) && lc.slots != nil {
				select {
				case <-lc.slots:
				default:
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// acquire takes an in-flight slot (at once without a slot limit); false
// when stop is closed or the connection ends first.
func (lc *loadConn) acquire(stop <-chan struct{}) bool {
	if lc.slots == nil {
		return true
	}
	select {
	case lc.slots <- struct{}{}:
		return true
	case <-stop:
	case <-lc.done:
	}
	return false
}

// release gives back a slot taken by acquire for a request not sent.
func (lc *loadConn) release() {
	if lc.slots != nil {
		<-lc.slots
	}
}

// write registers id and writes its request line; must says whether it has
// to be answered. A failed write unregisters it.
func (lc *loadConn) write(id, line string, must bool) bool {
	key, _ := json.Marshal(id)
	id = string(key) // the tally knows ids as idKey does
	lc.ta.register(id, must)
	lc.wmu.Lock()
	_ = lc.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := lc.conn.Write([]byte(line))
	lc.wmu.Unlock()
	if err != nil {
		lc.ta.failed(id)
		return false
	}
	return true
}

// Close closes the connection and waits for its reader.
func (lc *loadConn) Close() {
	_ = lc.conn.Close()
	<-lc.done
}

// chaosLine is a call line with cache bypass, the given id, path and extra
// raw JSON fields.
func chaosLine(id, upstream, path, extra string) string {
	return fmt.Sprintf(`{"id":%q,"upstream":%q,"path":%q,"cache":"bypass"%s}`+"\n", id, upstream, path, extra)
}

// chaosUpstream answers each request with the next behaviour of a fixed
// cycle: hang (until the request goes away), reset (RST), 503, then ok
// twice. Two oks in a row let a half-open breaker close: while the breaker
// is open or half-open only its probes reach the upstream, so the cycle
// advances one probe at a time. /slow is outside the cycle: 200 after 800ms.
type chaosUpstream struct {
	*httptest.Server
	quit  chan struct{}
	n     atomic.Int64
	slow  atomic.Int64
	kinds [5]atomic.Int64
}

var chaosCycle = [...]string{"hang", "reset", "503", "ok", "ok"}

func newChaosUpstream(t testing.TB) *chaosUpstream {
	t.Helper()
	u := &chaosUpstream{quit: make(chan struct{})}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			u.slow.Add(1)
			select {
			case <-time.After(800 * time.Millisecond):
				writeJSON(w, http.StatusOK, map[string]any{"slow": true})
			case <-r.Context().Done():
			case <-u.quit:
			}
			return
		}
		i := (u.n.Add(1) - 1) % int64(len(chaosCycle))
		u.kinds[i].Add(1)
		switch chaosCycle[i] {
		case "hang":
			select {
			case <-r.Context().Done():
			case <-u.quit:
			}
		case "reset":
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			conn.Close()
		case "503":
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "busy"})
		default:
			writeJSON(w, http.StatusOK, map[string]any{"ok": true})
		}
	}))
	t.Cleanup(func() {
		close(u.quit)
		u.Server.CloseClientConnections()
		u.Server.Close()
	})
	return u
}

// Hits is how many requests reached the upstream.
func (u *chaosUpstream) Hits() int64 { return u.n.Load() }

// procStatusKB reads a field such as VmRSS or VmHWM (in kB) from
// /proc/PID/status.
func procStatusKB(t testing.TB, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status %s: %v", pid, field, err)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/status: no %s", pid, field)
	return 0
}

// raiseNoFile makes sure the soft RLIMIT_NOFILE is at least n (fender
// inherits it); it skips the test when the hard limit is lower.
func raiseNoFile(t testing.TB, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d this test needs", lim.Max, n)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("setrlimit: %v", err)
	}
}

// pollGauge scrapes until cond holds for the sum of name, at most d; it
// returns the last value and whether cond held.
func pollGauge(t testing.TB, m *metricsEndpoint, name string, d time.Duration, cond func(float64) bool) (float64, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		v := m.scrape(t).sum(name)
		if cond(v) {
			return v, true
		}
		if time.Now().After(deadline) {
			return v, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
