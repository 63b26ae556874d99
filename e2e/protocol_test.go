package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestPingEchoesIDType checks that the id comes back unchanged, with its JSON
// type: 7 as the number 7, "7" as the string "7" (SPEC 1, 5).
func TestPingEchoesIDType(t *testing.T) {
	t.Parallel()
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", refusedURL(t))})
	c := f.Dial(t)
	for _, id := range []string{`7`, `"7"`, `0`, `-12`, `1234567890123`, `"abc-def"`, `""`, `"ünïcode ✓"`} {
		t.Run(id, func(t *testing.T) {
			ch := c.Expect(id)
			c.WriteRaw(t, `{"id":`+id+`,"op":"ping"}`+"\n")
			r := c.Wait(t, ch)
			if got := idKey(r.ID); got != id {
				t.Errorf("id: got %s, want %s", got, id)
			}
			wantOK(t, r)
		})
	}
}

// TestCRLFLineEnding checks that a request ended by \r\n is accepted (SPEC 1).
func TestCRLFLineEnding(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := f.Dial(t)

	ch := c.Expect(`"crlf"`)
	c.WriteRaw(t, `{"id":"crlf","op":"ping"}`+"\r\n")
	wantOK(t, c.Wait(t, ch))

	ch = c.Expect(`"crlf-call"`)
	c.WriteRaw(t, `{"id":"crlf-call","upstream":"up","path":"/ok","cache":"bypass"}`+"\r\n")
	r := c.Wait(t, ch)
	wantOK(t, r)
	wantStatus(t, r, 200)
}

// TestBlankLinesIgnored checks that lines of only white space get no answer
// (SPEC 1).
func TestBlankLinesIgnored(t *testing.T) {
	t.Parallel()
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", refusedURL(t))})
	c := f.Dial(t)
	c.WriteRaw(t, "\n   \n\t\n\r\n \t \r\n")
	c.Ping(t)
	c.WriteRaw(t, "\n\n")
	c.Ping(t)
	if got, want := c.Total(), 2; got != want {
		t.Errorf("answer lines: got %d, want %d (only the pings); extra: %v", got, want, c.Unmatched())
	}
}

// TestConcurrentCallsOneConnection sends 100 calls to a slow upstream on one
// connection at once: each is answered exactly once, and they are worked on
// concurrently (SPEC 1).
func TestConcurrentCallsOneConnection(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := f.Dial(t)

	const n = 100
	const delay = 200 * time.Millisecond
	start := time.Now()
	chans := make([]<-chan Resp, n)
	for i := range n {
		chans[i] = c.Send(t, callReq("up", fmt.Sprintf("/slow?ms=%d&i=%d", delay.Milliseconds(), i), "id", i))
	}
	for i, ch := range chans {
		r := c.Wait(t, ch)
		if got := idKey(r.ID); got != fmt.Sprint(i) {
			t.Errorf("id: got %s, want %d", got, i)
		}
		wantOK(t, r)
	}
	elapsed := time.Since(start)
	c.Ping(t) // a round trip, so any duplicate answer has arrived
	for i := range n {
		if got := c.Count(fmt.Sprint(i)); got != 1 {
			t.Errorf("answers to id %d: got %d, want 1", i, got)
		}
	}
	if extra := c.Unmatched(); len(extra) > 0 {
		t.Errorf("unexpected answers: %v", extra)
	}
	wantHits(t, u, "/slow", n)
	// One at a time would take n*delay = 20s.
	if elapsed > 5*time.Second {
		t.Errorf("100 calls of %v on one connection took %v, want them worked on concurrently", delay, elapsed)
	}
}

// TestBadRequestKeepsConnection sends malformed requests on one connection:
// each is answered bad_request (id null when it cannot be read), and the
// connection still answers a ping afterwards (SPEC 1).
func TestBadRequestKeepsConnection(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := f.Dial(t)

	const null = "null"
	cases := []struct {
		name string
		line string
		ids  []string // acceptable ids of the answer
	}{
		{"not json", `hello`, []string{null}},
		{"truncated json", `{"id":1,"op":"ping"`, []string{null}},
		{"invalid utf8", `{"id":"utf","upstream":"up","path":"/ok","body_text":"a` + "\xff\xfe" + `b"}`, []string{`"utf"`, null}},
		{"array", `[{"id":1,"op":"ping"}]`, []string{null}},
		{"number", `42`, []string{null}},
		{"string", `"ping"`, []string{null}},
		{"json null", `null`, []string{null}},
		{"empty object", `{}`, []string{null}},
		{"missing id", `{"op":"ping"}`, []string{null}},
		{"id object", `{"id":{"a":1},"op":"ping"}`, []string{null}},
		{"id bool", `{"id":true,"op":"ping"}`, []string{null}},
		{"id null", `{"id":null,"op":"ping"}`, []string{null}},
		{"id array", `{"id":[1],"op":"ping"}`, []string{null}},
		{"unknown op", `{"id":"op1","op":"dance"}`, []string{`"op1"`}},
		{"op not string", `{"id":"op2","op":7}`, []string{`"op2"`}},
		{"empty path", `{"id":"p1","upstream":"up","path":""}`, []string{`"p1"`}},
		{"relative path", `{"id":"p2","upstream":"up","path":"ok"}`, []string{`"p2"`}},
		{"absolute URL as path", `{"id":"p3","upstream":"up","path":"http://127.0.0.1:1/ok"}`, []string{`"p3"`}},
		{"path not string", `{"id":"p4","upstream":"up","path":5}`, []string{`"p4"`}},
		{"negative retries", `{"id":"r1","upstream":"up","path":"/ok","retries":-1}`, []string{`"r1"`}},
		{"retries string", `{"id":"r2","upstream":"up","path":"/ok","retries":"3"}`, []string{`"r2"`}},
		{"retries fraction", `{"id":"r3","upstream":"up","path":"/ok","retries":1.5}`, []string{`"r3"`}},
		{"zero timeout_ms", `{"id":"t1","upstream":"up","path":"/ok","timeout_ms":0}`, []string{`"t1"`}},
		{"negative timeout_ms", `{"id":"t2","upstream":"up","path":"/ok","timeout_ms":-100}`, []string{`"t2"`}},
		{"timeout_ms string", `{"id":"t3","upstream":"up","path":"/ok","timeout_ms":"100"}`, []string{`"t3"`}},
		{"unknown cache mode", `{"id":"c1","upstream":"up","path":"/ok","cache":"nope"}`, []string{`"c1"`}},
		{"body and body_text", `{"id":"b1","upstream":"up","path":"/ok","body":{"a":1},"body_text":"a"}`, []string{`"b1"`}},
		{"body_text not string", `{"id":"b2","upstream":"up","path":"/ok","body_text":5}`, []string{`"b2"`}},
		{"headers not object", `{"id":"h1","upstream":"up","path":"/ok","headers":"X-A: 1"}`, []string{`"h1"`}},
		{"header value not string", `{"id":"h2","upstream":"up","path":"/ok","headers":{"X-A":1}}`, []string{`"h2"`}},
		{"method not string", `{"id":"m1","upstream":"up","path":"/ok","method":5}`, []string{`"m1"`}},
		{"model not string", `{"id":"m2","upstream":"up","path":"/ok","model":5}`, []string{`"m2"`}},
		{"upstream not string", `{"id":"u3","upstream":5,"path":"/ok"}`, []string{`"u3"`}},
		{"call without upstream", `{"id":"u1","op":"call","path":"/ok"}`, []string{`"u1"`}},
		{"default op without upstream", `{"id":"u2","path":"/ok"}`, []string{`"u2"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.WriteRaw(t, tc.line+"\n")
			r := c.Next(t)
			if got := idKey(r.ID); !slices.Contains(tc.ids, got) {
				t.Errorf("id: got %q, want one of %v (answer %s)", got, tc.ids, r.Raw)
			}
			wantError(t, r, "bad_request", false)
			c.Ping(t)
		})
	}
	wantHits(t, u, "/ok", 0)
	if extra := c.Unmatched(); len(extra) > 0 {
		t.Errorf("unexpected extra answers: %v", extra)
	}
}

// TestUnknownUpstream checks unknown_upstream, not retryable (SPEC 1).
func TestUnknownUpstream(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL)})
	c := f.Dial(t)
	r := c.Call(t, callReq("nope", "/ok", "id", "uu"))
	if got := idKey(r.ID); got != `"uu"` {
		t.Errorf("id: got %s, want \"uu\"", got)
	}
	wantError(t, r, "unknown_upstream", false)
	c.Ping(t)
}
