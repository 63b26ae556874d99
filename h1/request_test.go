package h1

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const okEmpty = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

func TestRequestBytes(t *testing.T) {
	s := newRawServer(t, serveRaw(okEmpty))
	host := s.addr
	many := http.Header{}
	var manyLines string
	for i := range 20 {
		k := "X-H" + strconv.Itoa(10+i)
		many[k] = []string{strconv.Itoa(i)}
		manyLines += k + ": " + strconv.Itoa(i) + "\r\n"
	}
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"GET", Request{Method: "GET", Path: "/x"},
			"GET /x HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"},
		{"GET with query", Request{Method: "GET", Path: "/x/y?a=1&b=two"},
			"GET /x/y?a=1&b=two HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"},
		{"own User-Agent", Request{Method: "GET", Path: "/", Header: http.Header{"User-Agent": {"mine/2"}}},
			"GET / HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: mine/2\r\n\r\n"},
		{"POST without body", Request{Method: "POST", Path: "/p"},
			"POST /p HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"},
		{"PUT without body", Request{Method: "PUT", Path: "/p"},
			"PUT /p HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"},
		{"PATCH without body", Request{Method: "PATCH", Path: "/p"},
			"PATCH /p HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"},
		{"DELETE without body", Request{Method: "DELETE", Path: "/p"},
			"DELETE /p HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"},
		{"OPTIONS without body", Request{Method: "OPTIONS", Path: "/p"},
			"OPTIONS /p HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"},
		{"POST with body", Request{Method: "POST", Path: "/p", Body: []byte("hello\x00\r\n")},
			"POST /p HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 8\r\n\r\nhello\x00\r\n"},
		{"DELETE with body", Request{Method: "DELETE", Path: "/p", Body: []byte("{}")},
			"DELETE /p HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 2\r\n\r\n{}"},
		{"headers sorted, values in order, trimmed", Request{Method: "POST", Path: "/h", Body: []byte("b"), Header: http.Header{
			"X-B":          {"2", "  spaced \t"},
			"X-A":          {"1"},
			"Accept":       {"*/*"},
			"Content-Type": {"application/json"},
			"X-Tab":        {"a\tb"},
			"X-Utf8":       {"é"},
			"X-Empty":      {""},
			"X-None":       nil,
		}},
			"POST /h HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 1\r\n" +
				"Accept: */*\r\nContent-Type: application/json\r\nX-A: 1\r\nX-B: 2\r\nX-B: spaced\r\nX-Empty: \r\nX-Tab: a\tb\r\nX-Utf8: é\r\n\r\nb"},
		{"more headers than the stack buffer", Request{Method: "GET", Path: "/m", Header: many},
			"GET /m HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\n" + manyLines + "\r\n"},
		{"extension method", Request{Method: "PROPFIND", Path: "/d"},
			"PROPFIND /d HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"},
		{"Host, Content-Length and Transfer-Encoding in Header are the client's own", Request{Method: "POST", Path: "/o", Body: []byte("12345"), Header: http.Header{
			"Host": {"evil.example"}, "Content-Length": {"3"}, "Transfer-Encoding": {"chunked"},
		}},
			"POST /o HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 5\r\n\r\n12345"},
		{"empty User-Agent means none, as in net/http", Request{Method: "GET", Path: "/u", Header: http.Header{"User-Agent": {""}}},
			"GET /u HTTP/1.1\r\nHost: " + host + "\r\n\r\n"},
		{"GET with an empty body sends no Content-Length, as net/http", Request{Method: "GET", Path: "/e", Body: []byte{}},
			"GET /e HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"},
	}
	c := newClient(t, s.url(), Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := do(t, context.Background(), c, &tt.req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := string(s.lastRequest(t).raw); got != tt.want {
				t.Errorf("sent\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
	if n := s.dials(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestLargeRequestBody(t *testing.T) {
	s := newRawServer(t, serveRaw(okEmpty))
	c := newClient(t, s.url(), Options{})
	body := bytes.Repeat([]byte("abcdefghij"), 100000)
	for range 2 {
		resp, err := do(t, context.Background(), c, &Request{Method: "PUT", Path: "/big", Body: body})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		r := s.lastRequest(t)
		if !bytes.Equal(r.body, body) || r.req.ContentLength != int64(len(body)) {
			t.Errorf("upstream got %d bytes (Content-Length %d), want %d", len(r.body), r.req.ContentLength, len(body))
		}
	}
}

func TestBasicAuthFromURL(t *testing.T) {
	s := newRawServer(t, serveRaw(okEmpty))
	basic := func(s string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		url    string
		header http.Header
		want   []string // the Authorization values received
	}{
		{"user and password", "http://user:p%40ss:w@" + s.addr + "/", nil, []string{basic("user:p@ss:w")}},
		{"user only", "http://user@" + s.addr + "/", nil, []string{basic("user:")}},
		{"empty password", "http://user:@" + s.addr + "/", nil, []string{basic("user:")}},
		{"request's own Authorization wins", "http://user:pw@" + s.addr + "/", http.Header{"Authorization": {"Bearer tok"}}, []string{"Bearer tok"}},
		{"no userinfo", "http://" + s.addr + "/", nil, nil},
		{"no userinfo, request's own", "http://" + s.addr + "/", http.Header{"Authorization": {"Bearer tok"}}, []string{"Bearer tok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, tt.url, Options{})
			resp, err := do(t, context.Background(), c, &Request{Method: "GET", Path: "/a", Header: tt.header})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			r := s.lastRequest(t)
			if got := r.req.Header["Authorization"]; !slices.Equal(got, tt.want) {
				t.Errorf("Authorization = %q, want %q", got, tt.want)
			}
			if r.req.Host != s.addr {
				t.Errorf("Host = %q, want %q (no userinfo)", r.req.Host, s.addr)
			}
		})
	}
}

// splitRequest gives the request line, the header lines sorted and the
// body of a raw request.
func splitRequest(t *testing.T, raw []byte) (line string, headers []string, body string) {
	t.Helper()
	head, body, ok := strings.Cut(string(raw), "\r\n\r\n")
	if !ok {
		t.Fatalf("no end of head in %q", raw)
	}
	lines := strings.Split(head, "\r\n")
	headers = lines[1:]
	slices.Sort(headers)
	return lines[0], headers, body
}

// TestSameAsNetHTTP sends the same requests with this client and with
// net/http's (compression off, so that it adds no Accept-Encoding) and
// compares what the upstream receives.
func TestSameAsNetHTTP(t *testing.T) {
	s := newRawServer(t, serveRaw(okEmpty))
	std := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(std.CloseIdleConnections)
	tests := []struct {
		base   string // URL of the upstream, "ADDR" for its host:port
		method string
		path   string
		header http.Header
		body   []byte
	}{
		{"http://ADDR/", "GET", "/", nil, nil},
		{"http://ADDR", "GET", "/a/b?x=1&y=%20z", nil, nil},
		{"http://ADDR/", "POST", "/post", nil, nil},
		{"http://ADDR/", "PUT", "/put", nil, nil},
		{"http://ADDR/", "PATCH", "/patch", nil, nil},
		{"http://ADDR/", "DELETE", "/del", nil, nil},
		{"http://ADDR/", "HEAD", "/head", nil, nil},
		{"http://ADDR/", "POST", "/post", http.Header{"Content-Type": {"application/json"}}, []byte(`{"a":1}`)},
		{"http://ADDR/", "DELETE", "/del", nil, []byte("x")},
		{"http://ADDR/", "GET", "/get", nil, []byte("body on a GET")},
		{"http://ADDR/", "GET", "/", http.Header{"User-Agent": {"custom"}, "X-Multi": {"a", "b"}, "Accept": {"text/plain"}}, nil},
		{"http://ADDR/", "GET", "/", http.Header{"X-Spaces": {"  v  "}}, nil},
		{"http://u:pw@ADDR/", "GET", "/auth", nil, nil},
		{"http://u:pw@ADDR/", "GET", "/auth", http.Header{"Authorization": {"Bearer t"}}, nil},
		{"http://ADDR/prefix/", "GET", "/x", nil, nil},
		{"http://ADDR/prefix", "GET", "/x?q", nil, nil},
		{"http://ADDR/pre%20fix/p%C3%A4/", "POST", "/x/ä?q=ä", nil, []byte("1")},
		{"http://ADDR/", "GET", "/ä/ö", nil, nil},
		{"http://ADDR/", "GET", "/a%2Fb/c%41", nil, nil},
		{"http://ADDR/", "GET", `/a\b`, nil, nil},
		{"http://ADDR/", "GET", "/a#frag", nil, nil},
		{"http://ADDR/", "GET", "/a?b#frag", nil, nil},
		{"http://ADDR/", "GET", "/[x]/{y}|^`<>\"", nil, nil},
		{"http://ADDR/", "GET", "/!$&'()*+,;=:@~-._", nil, nil},
		{"http://ADDR/", "GET", "//double//slash", nil, nil},
		{"http://ADDR/", "GET", "/q?%zz&a=%41", nil, nil},
	}
	for _, tt := range tests {
		base := strings.Replace(tt.base, "ADDR", s.addr, 1)
		t.Run(tt.method+" "+base+" "+tt.path, func(t *testing.T) {
			c := newClient(t, base, Options{})
			resp, err := do(t, context.Background(), c, &Request{Method: tt.method, Path: tt.path, Header: tt.header.Clone(), Body: tt.body})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			mine := s.lastRequest(t)

			var rd io.Reader
			if tt.body != nil {
				rd = bytes.NewReader(tt.body)
			}
			req, err := http.NewRequest(tt.method, strings.TrimRight(base, "/")+tt.path, rd)
			if err != nil {
				t.Fatal(err)
			}
			if tt.header != nil {
				req.Header = tt.header.Clone()
			}
			sresp, err := std.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			sresp.Body.Close()
			theirs := s.lastRequest(t)

			ml, mh, mb := splitRequest(t, mine.raw)
			tl, th, tb := splitRequest(t, theirs.raw)
			if ml != tl {
				t.Errorf("request line %q, net/http sends %q", ml, tl)
			}
			if !slices.Equal(mh, th) {
				t.Errorf("headers\n%q\nnet/http sends\n%q", mh, th)
			}
			if mb != tb {
				t.Errorf("body %q, net/http sends %q", mb, tb)
			}
		})
	}
}

func TestRequestTarget(t *testing.T) {
	s := newRawServer(t, serveRaw(okEmpty))
	paths := []string{
		"/", "/a", "/a/b/", "/a?x=1", "/a?", "/?", "/a/./b/../c",
		"/ä", "/日本", "/a b", `/a\b`, "/a%2Fb", "/a%2fb", "/a%41", "/%7e", "/a%25b", "/a+b",
		"/a#frag", "/a?b=c#frag", "/#", "/a?x#y?z",
		"/a%zz", "/a%", "/a%2", "/%", "/a%zz?x=1", "/a?x=%zz", "/a?x=%",
		"/a\x7f", "/a\x00b", "/a\tb", "/a?x=\x01",
		"/a?x=ä", "/a?x=`{}|^",
		"/[::1]", "/a:b@c", "/a;b=c,d", "/a!$&'()*+,;=",
		"/~user", "//x", "///", "/a//b",
		"/a\"b", "/a<b>", "/a{b}", "/a|b", "/a^b", "/a`b",
	}
	bases := []string{
		"http://" + s.addr + "/",
		"http://" + s.addr,
		"http://" + s.addr + "/prefix/",
		"http://" + s.addr + "/pre/fix",
		"http://" + s.addr + "/p%C3%A4/a%2Fb/",
		"http://" + s.addr + "/a!b/c:d/",
	}
	for _, base := range bases {
		t.Run(base, func(t *testing.T) {
			c := newClient(t, base, Options{})
			for _, p := range paths {
				before := len(s.requests())
				dialsBefore := s.dials()
				u, perr := url.Parse(strings.TrimRight(base, "/") + p)
				resp, err := do(t, context.Background(), c, &Request{Method: "GET", Path: p})
				if perr != nil {
					var rerr *RequestError
					if !errors.As(err, &rerr) {
						t.Errorf("path %q: url.Parse fails (%v) but Do gives %v, want a *RequestError", p, perr, err)
						if err == nil {
							resp.Body.Close()
						}
					}
					if len(s.requests()) != before || s.dials() != dialsBefore {
						t.Errorf("path %q: something was sent", p)
					}
					continue
				}
				if err != nil {
					t.Errorf("path %q: %v (url.Parse gives %q)", p, err, u.RequestURI())
					continue
				}
				resp.Body.Close()
				rs := s.requests()
				if len(rs) != before+1 {
					t.Fatalf("path %q: %d requests arrived", p, len(rs)-before)
				}
				if got, want := rs[before].req.RequestURI, u.RequestURI(); got != want {
					t.Errorf("path %q: target %q, want %q", p, got, want)
				}
			}
		})
	}
}

func TestBadPathIsRequestError(t *testing.T) {
	s := newRawServer(t, serveRaw(okEmpty))
	c := newClient(t, s.url(), Options{})
	for _, p := range []string{"", "a", "a/b", "*", "http://evil/", "?x=1", " /a", "%2F"} {
		resp, err := do(t, context.Background(), c, &Request{Method: "GET", Path: p})
		var rerr *RequestError
		if !errors.As(err, &rerr) {
			t.Errorf("path %q: err = %v, want a *RequestError", p, err)
			if err == nil {
				resp.Body.Close()
			}
			continue
		}
		if rerr.Unwrap() == nil || !strings.HasPrefix(rerr.Error(), "h1: ") {
			t.Errorf("path %q: RequestError %q, Unwrap %v", p, rerr.Error(), rerr.Unwrap())
		}
	}
	if n := s.dials(); n != 0 {
		t.Errorf("dials = %d, want 0", n)
	}
}

func TestBadHeaderIsRequestError(t *testing.T) {
	s := newRawServer(t, serveRaw(okEmpty))
	c := newClient(t, s.url(), Options{})
	bad := []http.Header{
		{"Bad Name": {"x"}},
		{"": {"x"}},
		{"X:Y": {"x"}},
		{"X\tY": {"x"}},
		{"X(Y)": {"x"}},
		{"X/Y": {"x"}},
		{"X@Y": {"x"}},
		{"X\"Y": {"x"}},
		{"Ä": {"x"}},
		{"X\r\nInjected": {"x"}},
		{"X-Val": {"a\r\nInjected: y"}},
		{"X-Val": {"a\nb"}},
		{"X-Val": {"a\rb"}},
		{"X-Val": {"a\x00b"}},
		{"X-Val": {"a\x1fb"}},
		{"X-Val": {"a\x7fb"}},
		{"X-Val": {"ok", "bad\n"}},
		{"X-Ok": {"fine"}, "X-Val": {"\x01"}},
	}
	for _, h := range bad {
		resp, err := do(t, context.Background(), c, &Request{Method: "POST", Path: "/", Header: h, Body: []byte("x")})
		var rerr *RequestError
		if !errors.As(err, &rerr) {
			t.Errorf("header %q: err = %v, want a *RequestError", h, err)
			if err == nil {
				resp.Body.Close()
			}
		}
	}
	if n := s.dials(); n != 0 {
		t.Errorf("dials = %d, want 0: nothing may be sent for a bad header", n)
	}
	// Every token character is allowed in a name; tab and bytes over 0x7f
	// in a value.
	good := http.Header{
		"!#$%&'*+-.^_`|~09azAZ": {"v"},
		"X-Tab":                 {"a\tb"},
		"X-Latin":               {"caf\xe9"},
	}
	resp, err := do(t, context.Background(), c, &Request{Method: "GET", Path: "/", Header: good})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	raw := string(s.lastRequest(t).raw)
	for _, line := range []string{"!#$%&'*+-.^_`|~09azAZ: v\r\n", "X-Tab: a\tb\r\n", "X-Latin: caf\xe9\r\n"} {
		if !strings.Contains(raw, line) {
			t.Errorf("%q not in the request %q", line, raw)
		}
	}
}

// A bad target or header is refused before the context is looked at.
func TestRequestErrorBeforeContext(t *testing.T) {
	c := newClient(t, "http://127.0.0.1:1/", Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, r := range []*Request{
		{Method: "GET", Path: "nope"},
		{Method: "GET", Path: "/", Header: http.Header{"A B": {"c"}}},
	} {
		_, err := do(t, ctx, c, r)
		var rerr *RequestError
		if !errors.As(err, &rerr) {
			t.Errorf("err = %v, want a *RequestError", err)
		}
	}
}
