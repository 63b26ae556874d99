package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// hostileCase is one bad line and what it must be answered with.
type hostileCase struct {
	name    string
	line    string
	ids     []string // acceptable ids of the answer (compact JSON)
	mention string   // the error message must contain this, when set
}

// hostileLines are bad lines that must each get one bad_request answer.
// evil is the address of a server that must never be contacted.
func hostileLines(evil string) []hostileCase {
	null := []string{"null"}
	id := func(s string) []string { return []string{`"` + s + `"`, "null"} }
	call := func(id, fields string) string {
		return `{"id":"` + id + `","upstream":"up","path":"/ok","cache":"bypass",` + fields + `}`
	}
	const depth = 100_000
	cases := []hostileCase{
		{"not json", `not json at all`, null, ""},
		{"binary garbage", "\x01\x02\x7f\xfe garbage", null, ""},
		{"invalid utf8 in a value", `{"id":"u1","op":"ping","x":"a` + "\xff" + `b"}`, id("u1"), ""},
		{"overlong utf8 in a value", call("u2", `"body_text":"`+"\xc0\xaf"+`"`), id("u2"), ""},
		{"utf8 surrogate in a value", call("u3", `"body_text":"`+"\xed\xa0\x80"+`"`), id("u3"), ""},
		{"invalid utf8 in the id", `{"id":"a` + "\xff\xfe" + `b","op":"ping"}`, null, ""},
		{"invalid utf8 after the object", `{"id":"u4","op":"ping"}` + "\xff", id("u4"), ""},
		{"NUL inside a string", `{"id":"n1","op":"pi` + "\x00" + `ng"}`, id("n1"), ""},
		{"NUL between tokens", `{"id":"n2",` + "\x00" + `"op":"ping"}`, id("n2"), ""},
		{"NUL after the object", `{"id":"n3","op":"ping"}` + "\x00", id("n3"), ""},
		{"only NUL bytes", "\x00\x00\x00", null, ""},
		{"array", `[{"id":1,"op":"ping"}]`, null, ""},
		{"empty array", `[]`, null, ""},
		{"scalar 1", `1`, null, ""},
		{`scalar "x"`, `"x"`, null, ""},
		{"scalar true", `true`, null, ""},
		{"scalar null", `null`, null, ""},
		{"duplicate op", `{"id":1,"op":"ping","op":"health"}`, []string{"1", "null"}, "op"},
		{"duplicate id", `{"id":1,"id":2,"op":"ping"}`, []string{"1", "2", "null"}, "id"},
		{"id object", `{"id":{"a":1},"op":"ping"}`, null, ""},
		{"id array", `{"id":[1],"op":"ping"}`, null, ""},
		{"id true", `{"id":true,"op":"ping"}`, null, ""},
		{"id false", `{"id":false,"op":"ping"}`, null, ""},
		{"id null", `{"id":null,"op":"ping"}`, null, ""},
		{"id upper case only", `{"ID":5,"op":"ping"}`, null, ""},
		{"deep [ unclosed", `{"id":"deep1","op":"ping","x":` + strings.Repeat("[", depth) + `}`, id("deep1"), ""},
		{"deep [ in body", call("deep2", `"body":`+strings.Repeat("[", depth)+strings.Repeat("]", depth)), id("deep2"), ""},
		{`deep {"a": unclosed`, `{"id":"deep3","op":"ping","x":` + strings.Repeat(`{"a":`, depth) + `}`, id("deep3"), ""},
		{`deep {"a": in body`, call("deep4", `"body":`+strings.Repeat(`{"a":`, depth)+"1"+strings.Repeat("}", depth)), id("deep4"), ""},
	}
	for i, v := range []string{"1e30", "-5", "0", "1.5", "9223372036854775807", "-9223372036854775808", "1e3x"} {
		cases = append(cases, hostileCase{"timeout_ms " + v, call(fmt.Sprint("tm", i), `"timeout_ms":`+v), id(fmt.Sprint("tm", i)), ""})
	}
	for i, v := range []string{"-1", "1e20", "2.5", "18446744073709551616"} {
		cases = append(cases, hostileCase{"retries " + v, call(fmt.Sprint("rt", i), `"retries":`+v), id(fmt.Sprint("rt", i)), ""})
	}
	for i, p := range []string{
		"http://evil/", "https://evil.com/x", "http://" + evil + "/x", "//evil.com/x", "//" + evil + "/x",
		`/a\r\nHost: evil`, `/a\nb`, "@evil.com", "@" + evil + "/x", "evil.com/x", evil + "/x", "ok", `\\evil.com\\x`,
	} {
		pid := fmt.Sprint("path", i)
		cases = append(cases, hostileCase{"path " + p, `{"id":"` + pid + `","upstream":"up","cache":"bypass","path":"` + p + `"}`, id(pid), ""})
	}
	return cases
}

// TestHostileInputs sends hostile lines on one connection while calls are
// in flight on it: each line gets exactly one clear bad_request, the
// connection keeps answering, the calls in flight are each answered once,
// and neither the upstream nor another host sees any of them (SPEC 1).
func TestHostileInputs(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	var evilHits atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { evilHits.Add(1) }))
	t.Cleanup(evil.Close)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := f.Dial(t)

	const flying = 4
	var inflight []<-chan Resp
	for i := range flying {
		inflight = append(inflight, c.Send(t, callReq("up", pathf("/slow?ms=1500&i=%d", i), "id", pathf("fly-%d", i))))
	}
	u.WaitHits(t, "/slow", flying, 10*time.Second)

	for _, tc := range hostileLines(strings.TrimPrefix(evil.URL, "http://")) {
		t.Run(tc.name, func(t *testing.T) {
			c.WriteRaw(t, tc.line+"\n")
			r := c.Next(t)
			if r.DecodeErr != nil || !utf8.ValidString(r.Raw) {
				t.Errorf("answer is not one valid UTF-8 JSON object: %q (%v)", tail(r.Raw, 300), r.DecodeErr)
			}
			if got := idKey(r.ID); !slices.Contains(tc.ids, got) {
				t.Errorf("id: got %s, want one of %v (answer %s)", got, tc.ids, tail(r.Raw, 300))
			}
			wantError(t, r, "bad_request", false)
			if r.Error.Message == "" || tc.mention != "" && !strings.Contains(r.Error.Message, tc.mention) {
				t.Errorf("error message %q: want a clear message naming %q", r.Error.Message, tc.mention)
			}
			c.Ping(t)
		})
	}
	t.Run("field names are case-sensitive", func(t *testing.T) {
		// "OP" is not "op": the line is a ping (or refused), never a health.
		r := c.Call(t, Req{"id": "cs1", "op": "ping", "OP": "health"})
		if r.OK && len(r.Status) > 0 {
			t.Errorf(`{"op":"ping","OP":"health"}: got %s, want a ping answer or bad_request`, r.Raw)
		} else if !r.OK {
			wantError(t, r, "bad_request", false)
		}
	})

	for i, ch := range inflight {
		if r := c.Wait(t, ch); !r.OK {
			t.Errorf("call %d in flight during the hostile lines: got %s, want ok", i, r.Raw)
		}
	}
	c.Ping(t) // a round trip, so that any duplicate has arrived
	for i := range flying {
		if got := c.Count(pathf(`"fly-%d"`, i)); got != 1 {
			t.Errorf("answers to call %d in flight: got %d, want 1", i, got)
		}
	}
	if extra := c.Unmatched(); len(extra) > 0 {
		t.Errorf("unexpected extra answers: %v", extra)
	}
	u.mu.Lock()
	seen := fmt.Sprint(u.hits)
	u.mu.Unlock()
	if seen != fmt.Sprintf("map[/slow:%d]", flying) {
		t.Errorf("upstream requests: got %s, want only the %d calls to /slow", seen, flying)
	}
	if n := evilHits.Load(); n != 0 {
		t.Errorf("requests to another host: got %d, want 0", n)
	}
}

// TestHostileHugeLine writes a 100 MB line with FENDER_MAX_REQUEST_BYTES at
// its default (1 MiB) after a call and before a ping on the same
// connection: the line is too_large, the call and the ping are answered,
// and fender's memory stays bounded (SPEC 1, 7).
func TestHostileHugeLine(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	pid := f.cmd.Process.Pid
	f.Client(t).Ping(t)
	rss0, hwm0 := procStatusKB(t, pid, "VmRSS"), procStatusKB(t, pid, "VmHWM")

	c := f.Dial(t)
	before := c.Send(t, callReq("up", "/slow?ms=300", "id", "before"))
	huge := c.Expect(`"huge"`)
	after := c.Expect(`"after"`)
	const size = 100 << 20
	written := make(chan error, 1)
	start := time.Now()
	go func() {
		w := bufio.NewWriterSize(c.conn, 64<<10)
		chunk := []byte(strings.Repeat("x", 1<<20))
		_ = c.conn.SetWriteDeadline(time.Now().Add(60 * time.Second))
		c.wmu.Lock()
		defer c.wmu.Unlock()
		w.WriteString(`{"id":"huge","upstream":"up","path":"/ok","cache":"bypass","body_text":"`)
		for range size / len(chunk) {
			w.Write(chunk)
		}
		w.WriteString(`"}` + "\n" + `{"id":"after","op":"ping"}` + "\n")
		written <- w.Flush()
	}()
	if r := c.WaitFor(t, before, 30*time.Second); !r.OK {
		t.Errorf("call before the huge line: got %s, want ok", r.Raw)
	}
	var r Resp
	select {
	case r = <-huge:
	case r = <-nextUnmatched(c):
		if got := idKey(r.ID); got != "null" {
			t.Errorf("huge line answered with id %s, want \"huge\" or null", got)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no answer to the 100 MB line within 60s")
	}
	wantError(t, r, "too_large", false)
	if err := <-written; err != nil {
		t.Fatalf("writing the 100 MB line: %v (fender must keep reading it)", err)
	}
	elapsed := time.Since(start)
	if r := c.WaitFor(t, after, 30*time.Second); !r.OK {
		t.Errorf("ping after the huge line: got %s, want ok", r.Raw)
	}
	c.Ping(t)
	rss1, hwm1 := procStatusKB(t, pid, "VmRSS"), procStatusKB(t, pid, "VmHWM")
	t.Logf("summary: 100 MB line written in %v, answer %s; fender VmRSS before=%d kB after=%d kB (growth %d kB), VmHWM before=%d kB after=%d kB",
		elapsed.Round(time.Millisecond), r.Code(), rss0, rss1, rss1-rss0, hwm0, hwm1)
	const bound = 40 << 10 // kB
	if rss1-rss0 >= bound {
		t.Errorf("VmRSS growth: got %d kB, want under %d kB", rss1-rss0, bound)
	}
	if hwm1-max(rss0, hwm0) >= bound {
		t.Errorf("VmHWM (peak) growth: got %d kB over %d kB, want under %d kB", hwm1-max(rss0, hwm0), max(rss0, hwm0), bound)
	}
	wantHits(t, u, "/ok", 0)
	for _, id := range []string{`"before"`, `"after"`} {
		if got := c.Count(id); got != 1 {
			t.Errorf("answers to %s: got %d, want 1", id, got)
		}
	}
	if got := c.Total(); got != 4 {
		t.Errorf("answer lines: got %d, want 4 (call, too_large, two pings); extra: %v", got, c.Unmatched())
	}
}

// nextUnmatched delivers the next answer no Expect claimed.
func nextUnmatched(c *Client) <-chan Resp { return c.queue }

// TestHostileHeaders sends the headers a client may not pass on: Host,
// Content-Length, Transfer-Encoding and the hop-by-hop ones (Connection
// and those it names, Keep-Alive, Proxy-*, TE, Trailer, Upgrade), in two
// spellings: the upstream sees its own Host, a Content-Length that matches
// the body, and none of them; other headers are forwarded (SPEC 1).
func TestHostileHeaders(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	host := strings.TrimPrefix(u.URL, "http://")
	dropped := []string{"Host", "Transfer-Encoding", "Connection", "X-Drop", "Content-Length", "Upgrade",
		"TE", "Keep-Alive", "Proxy-Authorization", "Proxy-Authenticate", "Trailer"}
	values := []string{"evil.com", "chunked", "close, X-Drop", "1", "999", "websocket",
		"trailers", "timeout=600", "Basic ZXZpbDpldmls", "Basic", "X-Trailer"}
	for _, spelling := range []func(string) string{func(s string) string { return s }, strings.ToLower} {
		name := spelling("Host")
		t.Run(name, func(t *testing.T) {
			headers := map[string]any{"X-Keep": "yes"}
			for i, h := range dropped {
				headers[spelling(h)] = values[i]
			}
			body := `{"n":12345}`
			r := f.Call(t, callReq("up", "/ok/"+name, "body_text", body, "headers", headers))
			wantOK(t, r)
			e := decodeEcho(t, r)
			if e.Host != host {
				t.Errorf("upstream Host: got %q, want %q", e.Host, host)
			}
			if e.Body != body || e.ContentLength != int64(len(body)) || len(e.TransferEncoding) != 0 {
				t.Errorf("upstream body %q, Content-Length %d, Transfer-Encoding %v: want %q, %d, none",
					e.Body, e.ContentLength, e.TransferEncoding, body, len(body))
			}
			for k, v := range e.Headers {
				lk := strings.ToLower(k)
				if lk == "connection" && !strings.Contains(strings.ToLower(v), "x-drop") {
					continue // fender's own connection handling, not the client's
				}
				if lk == "content-length" && v == fmt.Sprint(len(body)) {
					continue // the body's own length
				}
				if slices.ContainsFunc(dropped, func(h string) bool { return strings.EqualFold(h, k) }) {
					t.Errorf("upstream got header %s: %q, want it dropped", k, v)
				}
			}
			if got := e.Headers["X-Keep"]; got != "yes" {
				t.Errorf("upstream header X-Keep: got %q, want \"yes\" (other headers are forwarded)", got)
			}
		})
	}
}

// TestHostileRedirect checks that 3xx answers pointing at another host are
// answered as they are, Location included, and that host is never
// contacted (SPEC 1).
func TestHostileRedirect(t *testing.T) {
	t.Parallel()
	var otherHits atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { otherHits.Add(1) }))
	t.Cleanup(other.Close)
	target := other.URL + "/stolen?x=1"
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var code int
		fmt.Sscanf(r.URL.Path, "/r%d", &code)
		w.Header().Set("Location", target)
		w.WriteHeader(code)
	}))
	t.Cleanup(up.Close)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", up.URL), "FENDER_RETRIES": "0"})
	for _, code := range []int{301, 302, 303, 307, 308} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			r := f.Call(t, callReq("up", pathf("/r%d", code), "body", map[string]any{"secret": "payload"}))
			wantOK(t, r)
			wantStatus(t, r, code)
			if loc, _ := r.Header("Location"); loc != target {
				t.Errorf("Location: got %q, want %q", loc, target)
			}
		})
	}
	if n := otherHits.Load(); n != 0 {
		t.Errorf("requests to the redirect target: got %d, want 0", n)
	}
}

// TestHostileHalfClose writes requests and then shuts down its writing
// side: every request still gets its one answer, and fender then closes
// the connection (SPEC 1, 8).
func TestHostileHalfClose(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	conn, err := net.Dial("unix", f.Socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	var lines []string
	want := map[string]int{"null": 1}
	for i := range 5 {
		lines = append(lines, fmt.Sprintf(`{"id":"p%d","op":"ping"}`, i))
		lines = append(lines, fmt.Sprintf(`{"id":"c%d","upstream":"up","path":"/slow?ms=300&i=%d","cache":"bypass"}`, i, i))
		want[fmt.Sprintf(`"p%d"`, i)], want[fmt.Sprintf(`"c%d"`, i)] = 1, 1
	}
	lines = append(lines, "not json")
	if _, err := conn.Write([]byte(strings.Join(lines, "\n") + "\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := map[string]int{}
	br := bufio.NewReader(conn)
	var readErr error
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			r := parseResp(line)
			got[idKey(r.ID)]++
			if key := idKey(r.ID); strings.HasPrefix(key, `"c`) && !r.OK || key == "null" && r.Code() != "bad_request" {
				t.Errorf("answer %s: want ok for a call, bad_request for the bad line", r.Raw)
			}
		}
		if err != nil {
			readErr = err
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("answers per id after CloseWrite: got %v, want %v", got, want)
	}
	if ne, ok := readErr.(net.Error); ok && ne.Timeout() {
		t.Errorf("connection still open 20s after the client's CloseWrite and the last answer, want fender to close it")
	}
}

// TestHostileSilentClients checks that a client that connects and sends
// nothing, and one that sends half a line and stalls, do not stop others;
// the stalled line is answered once completed (SPEC 1).
func TestHostileSilentClients(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	idle := f.Dial(t)
	partial := f.Dial(t)
	done := partial.Expect(`"partial"`)
	partial.WriteRaw(t, `{"id":"partial","op":"pi`)

	c := f.Dial(t)
	for i := range 10 {
		if r := c.WaitFor(t, c.Send(t, Req{"op": "ping"}), 3*time.Second); !r.OK {
			t.Errorf("ping %d: got %s, want ok", i, r.Raw)
		}
		if r := c.WaitFor(t, c.Send(t, callReq("up", "/ok", "i", i)), 3*time.Second); !r.OK {
			t.Errorf("call %d: got %s, want ok", i, r.Raw)
		}
	}
	partial.WriteRaw(t, `ng"}`+"\n")
	wantOK(t, partial.WaitFor(t, done, 3*time.Second))
	idle.Ping(t)
	wantHits(t, u, "/ok", 10)
}
