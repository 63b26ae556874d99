package h1

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

func TestContentLengthBody(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nx-lower: c\r\n\r\nhello"))
	c := newClient(t, s.url(), Options{})
	resp, body := mustGet(t, c, "/x")
	if body != "hello" {
		t.Errorf("body = %q, want %q", body, "hello")
	}
	if resp.StatusCode != 200 || resp.Status != "200 OK" || resp.Proto != "HTTP/1.1" || resp.ProtoMajor != 1 || resp.ProtoMinor != 1 {
		t.Errorf("status = %d %q %q %d.%d", resp.StatusCode, resp.Status, resp.Proto, resp.ProtoMajor, resp.ProtoMinor)
	}
	if resp.ContentLength != 5 {
		t.Errorf("ContentLength = %d, want 5", resp.ContentLength)
	}
	if got := resp.Header.Get("X-A"); got != "b" {
		t.Errorf("X-A = %q", got)
	}
	if got := resp.Header["X-Lower"]; len(got) != 1 || got[0] != "c" {
		t.Errorf("X-Lower = %q (header keys must be canonical)", got)
	}
	if resp.Header.Get("Content-Length") != "5" {
		t.Errorf("Content-Length header = %q", resp.Header.Get("Content-Length"))
	}
	if resp.TransferEncoding != nil {
		t.Errorf("TransferEncoding = %q", resp.TransferEncoding)
	}
	if n := c.Idle(); n != 1 {
		t.Errorf("Idle() = %d after a body read to its end, want 1", n)
	}
}

func TestLargeContentLengthBody(t *testing.T) {
	// Larger than the connection's buffers, read in every pattern iotest
	// knows, then a second exchange on the same connection.
	content := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz"), 3000)
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(content))+"\r\n\r\n"+string(content)))
	c := newClient(t, s.url(), Options{})
	for i := range 2 {
		resp, err := get(t, c, "/")
		if err != nil {
			t.Fatal(err)
		}
		if err := iotest.TestReader(resp.Body, content); err != nil {
			t.Errorf("exchange %d: %v", i, err)
		}
		resp.Body.Close()
	}
	if n := s.dials(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestChunkedBody(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want string
	}{
		{"several chunks", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n", "hello world!"},
		{"extensions and upper-case hex", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5;a=b\r\nhello\r\nA\r\n0123456789\r\n0;last\r\n\r\n", "hello0123456789"},
		{"trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 42\r\nX-Other: y\r\n\r\n", "abcde"},
		{"empty", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", ""},
		{"empty with trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n\r\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveRaw(tt.raw))
			c := newClient(t, s.url(), Options{})
			for i := range 3 {
				resp, body := mustGet(t, c, "/")
				if body != tt.want {
					t.Errorf("exchange %d: body = %q, want %q", i, body, tt.want)
				}
				if resp.ContentLength != -1 {
					t.Errorf("ContentLength = %d, want -1", resp.ContentLength)
				}
				if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
					t.Errorf("TransferEncoding = %q", resp.TransferEncoding)
				}
				if _, ok := resp.Header["Transfer-Encoding"]; ok {
					t.Errorf("Transfer-Encoding left in Header")
				}
			}
			if n := s.dials(); n != 1 {
				t.Errorf("dials = %d, want 1 (chunked answers keep the connection)", n)
			}
		})
	}
}

func TestChunkedSmallReads(t *testing.T) {
	var b strings.Builder
	var want strings.Builder
	b.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
	for i := range 200 {
		chunk := strings.Repeat(string(rune('a'+i%26)), i%37+1)
		want.WriteString(chunk)
		b.WriteString(strconv.FormatInt(int64(len(chunk)), 16) + "\r\n" + chunk + "\r\n")
	}
	b.WriteString("0\r\nX-T: v\r\n\r\n")
	s := newRawServer(t, serveRaw(b.String()))
	c := newClient(t, s.url(), Options{})
	for i := range 2 {
		resp, err := get(t, c, "/")
		if err != nil {
			t.Fatal(err)
		}
		if err := iotest.TestReader(resp.Body, []byte(want.String())); err != nil {
			t.Errorf("exchange %d: %v", i, err)
		}
		resp.Body.Close()
	}
	if n := s.dials(); n != 1 {
		t.Errorf("dials = %d, want 1", n)
	}
}

func TestCloseDelimitedBody(t *testing.T) {
	s := newRawServer(t, serveRawClose("HTTP/1.1 200 OK\r\nX: y\r\n\r\nall of this until the close"))
	c := newClient(t, s.url(), Options{})
	for i := range 2 {
		resp, body := mustGet(t, c, "/")
		if body != "all of this until the close" {
			t.Errorf("body = %q", body)
		}
		if resp.ContentLength != -1 {
			t.Errorf("ContentLength = %d, want -1", resp.ContentLength)
		}
		if n := c.Idle(); n != 0 {
			t.Errorf("exchange %d: Idle() = %d, want 0 (the connection is at its end)", i, n)
		}
	}
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

func TestInterimAnswersSkipped(t *testing.T) {
	const final = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok"
	tests := []struct {
		name   string
		writes []string
	}{
		{"100 Continue", []string{"HTTP/1.1 100 Continue\r\n\r\n" + final}},
		{"103 Early Hints with headers", []string{"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n\r\n" + final}},
		{"several, separate writes", []string{"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 102 Processing\r\n\r\n", "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", final}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, func(sc *srvConn) {
				for {
					if _, err := sc.next(); err != nil {
						return
					}
					for _, w := range tt.writes {
						if sc.write(w) != nil {
							return
						}
					}
				}
			})
			c := newClient(t, s.url(), Options{})
			for range 2 {
				resp, body := mustGet(t, c, "/")
				if resp.StatusCode != 200 || body != "ok" {
					t.Errorf("got %d %q, want 200 \"ok\"", resp.StatusCode, body)
				}
				if resp.Header.Get("X-Final") != "1" || resp.Header.Get("Link") != "" {
					t.Errorf("headers = %v, want the final answer's only", resp.Header)
				}
			}
			if n := s.dials(); n != 1 {
				t.Errorf("dials = %d, want 1", n)
			}
		})
	}
}

func TestInterimAnswersEachGetTheHeaderBound(t *testing.T) {
	// Each interim answer and the final one are under the bound, their sum
	// is not.
	pad := strings.Repeat("p", 150)
	raw := "HTTP/1.1 103 Early Hints\r\nX-Pad: " + pad + "\r\n\r\n" +
		"HTTP/1.1 103 Early Hints\r\nX-Pad: " + pad + "\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: " + pad + "\r\n\r\nok"
	s := newRawServer(t, serveRaw(raw))
	c := newClient(t, s.url(), Options{MaxHeaderBytes: 256})
	_, body := mustGet(t, c, "/")
	if body != "ok" {
		t.Errorf("body = %q", body)
	}
}

func TestSwitchingProtocolsIsAnError(t *testing.T) {
	s := newRawServer(t, serveEach(func(sc *srvConn, r *capturedReq) (string, bool) {
		sc.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		sc.hang()
		return "", true
	}))
	c := newClient(t, s.url(), Options{})
	resp, err := get(t, c, "/")
	if err == nil {
		resp.Body.Close()
		t.Fatal("a 101 answer was accepted")
	}
	if !strings.Contains(err.Error(), "101") {
		t.Errorf("error %q does not name the 101", err)
	}
	s.waitEOF(t, 1)
	if n := c.Idle(); n != 0 {
		t.Errorf("Idle() = %d, want 0", n)
	}
}

func TestNoBodyAnswers(t *testing.T) {
	tests := []struct {
		name   string
		method string
		raw    string
		wantCL int64
	}{
		{"HEAD with Content-Length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 5},
		{"HEAD with chunked", "HEAD", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n", 7},
		{"204 with Content-Length", "GET", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 0},
		{"304 with Content-Length", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n", 0},
		{"304 to a POST", "POST", "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", 0},
		{"Content-Length 0", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0},
		{"Content-Length 0 twice", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveRaw(tt.raw))
			c := newClient(t, s.url(), Options{})
			for i := range 3 {
				resp, err := do(t, context.Background(), c, &Request{Method: tt.method, Path: "/"})
				if err != nil {
					t.Fatalf("exchange %d: %v", i, err)
				}
				if resp.Body != http.NoBody {
					t.Errorf("Body = %T, want http.NoBody", resp.Body)
				}
				if resp.ContentLength != tt.wantCL {
					t.Errorf("ContentLength = %d, want %d", resp.ContentLength, tt.wantCL)
				}
				// Released before Do returned, without a body read.
				if n := c.Idle(); n != 1 {
					t.Errorf("exchange %d: Idle() = %d, want 1", i, n)
				}
				resp.Body.Close()
			}
			if n := s.dials(); n != 1 {
				t.Errorf("dials = %d, want 1", n)
			}
		})
	}
}

// HEAD, 204 and 304 answers usually carry no Content-Length at all.
func TestNoBodyAnswersWithoutContentLength(t *testing.T) {
	tests := []struct {
		name   string
		method string
		raw    string
	}{
		{"HEAD", "HEAD", "HTTP/1.1 200 OK\r\nX: y\r\n\r\n"},
		{"204", "GET", "HTTP/1.1 204 No Content\r\n\r\n"},
		{"304", "GET", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"},
		{"204 to DELETE", "DELETE", "HTTP/1.1 204 No Content\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"},
		{"100 then 204", "PUT", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveRaw(tt.raw))
			c := newClient(t, s.url(), Options{})
			for i := range 2 {
				resp, err := do(t, context.Background(), c, &Request{Method: tt.method, Path: "/"})
				if err != nil {
					t.Fatalf("exchange %d: %v", i, err)
				}
				if resp.Body != http.NoBody {
					t.Errorf("Body = %T, want http.NoBody", resp.Body)
				}
				if resp.ContentLength != 0 {
					t.Errorf("ContentLength = %d, want 0", resp.ContentLength)
				}
			}
			if n := s.dials(); n != 1 {
				t.Errorf("dials = %d, want 1", n)
			}
		})
	}
}

// The same, from a net/http server: it sends no Content-Length with 204 and
// 304 answers.
func TestNoBodyAnswersFromNetHTTPServer(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		}
	}))
	t.Cleanup(ts.Close)
	c := newClient(t, ts.URL, Options{})
	for _, path := range []string{"/204", "/304"} {
		t.Run(path, func(t *testing.T) {
			resp, err := get(t, c, path)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 204 && resp.StatusCode != 304 || resp.Body != http.NoBody {
				t.Errorf("got %d, body %T", resp.StatusCode, resp.Body)
			}
		})
	}
}

func TestMalformedAnswers(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want string // a part of the error text, if not empty
	}{
		{"no space in status line", "HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "malformed"},
		{"garbage", "hello there\r\n\r\n", "malformed"},
		{"empty status line", "\r\n\r\n", "malformed"},
		{"two-digit code", "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "status code"},
		{"four-digit code", "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "status code"},
		{"letters for code", "HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", "status code"},
		{"signed code", "HTTP/1.1 +20 OK\r\nContent-Length: 0\r\n\r\n", "status code"},
		{"code under 100", "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", "status code"},
		{"HTTP/2.0", "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "version"},
		{"HTTP/0.9", "HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n", "version"},
		{"not HTTP", "HTXP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "version"},
		{"lower-case http", "http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "version"},
		{"conflicting Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "conflicting"},
		{"Content-Length list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", "Content-Length"},
		{"negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"},
		{"plus Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "Content-Length"},
		{"garbage Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", "Content-Length"},
		{"hex Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", "Content-Length"},
		{"empty Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", "Content-Length"},
		{"huge Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n", "Content-Length"},
		{"gzip Transfer-Encoding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", "transfer encoding"},
		{"gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "transfer encoding"},
		{"identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", "transfer encoding"},
		{"chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "transfer encoding"},
		{"header without colon", "HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 0\r\n\r\n", ""},
		{"leading continuation line", "HTTP/1.1 200 OK\r\n folded: x\r\nContent-Length: 0\r\n\r\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveEach(func(sc *srvConn, _ *capturedReq) (string, bool) {
				sc.write(tt.raw)
				sc.hang()
				return "", true
			}))
			c := newClient(t, s.url(), Options{})
			resp, err := get(t, c, "/")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Fatalf("accepted: %d %q, headers %v, body %q", resp.StatusCode, resp.Status, resp.Header, b)
			}
			var rerr *RequestError
			if errors.As(err, &rerr) {
				t.Errorf("error %v is a *RequestError; the request was fine", err)
			}
			if tt.want != "" && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			// A connection that gave a bad answer is closed, not pooled.
			s.waitEOF(t, 1)
			if n := c.Idle(); n != 0 {
				t.Errorf("Idle() = %d, want 0", n)
			}
		})
	}
}

func TestNoAnswer(t *testing.T) {
	tests := []struct {
		name string
		raw  string
	}{
		{"closed at once", ""},
		{"closed in the status line", "HTTP/1.1 200"},
		{"closed in the headers", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveRawClose(tt.raw))
			c := newClient(t, s.url(), Options{})
			resp, err := get(t, c, "/")
			if err == nil {
				resp.Body.Close()
				t.Fatalf("accepted %d %v", resp.StatusCode, resp.Header)
			}
			if tt.raw == "" && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("err = %v, want io.ErrUnexpectedEOF", err)
			}
		})
	}
}

func TestEquivalentContentLengthsAccepted(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length:  5 \r\n\r\nhello"))
	c := newClient(t, s.url(), Options{})
	resp, body := mustGet(t, c, "/")
	if body != "hello" || resp.ContentLength != 5 {
		t.Errorf("got %q, ContentLength %d", body, resp.ContentLength)
	}
}

// headWithSize is a status line and headers of exactly n bytes, followed by
// a body of "ok".
func headWithSize(t *testing.T, n int) string {
	const start = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
	const end = "\r\n\r\n"
	pad := n - len(start) - len(end)
	if pad < 1 {
		t.Fatalf("head of %d bytes is too small", n)
	}
	h := start + strings.Repeat("p", pad) + end
	if len(h) != n {
		t.Fatalf("built %d bytes, want %d", len(h), n)
	}
	return h + "ok"
}

func TestMaxHeaderBytes(t *testing.T) {
	const max = 200
	for _, size := range []int{max - 10, max - 1, max} {
		t.Run("fits/"+strconv.Itoa(size), func(t *testing.T) {
			s := newRawServer(t, serveRaw(headWithSize(t, size)))
			c := newClient(t, s.url(), Options{MaxHeaderBytes: max})
			for range 2 {
				_, body := mustGet(t, c, "/")
				if body != "ok" {
					t.Errorf("body = %q, want \"ok\"", body)
				}
			}
			if n := s.dials(); n != 1 {
				t.Errorf("dials = %d, want 1", n)
			}
		})
	}
	for _, size := range []int{max + 1, max + 2, max + 3, max + 50, 10 * max, 20000} {
		t.Run("over/"+strconv.Itoa(size), func(t *testing.T) {
			s := newRawServer(t, serveEach(func(sc *srvConn, _ *capturedReq) (string, bool) {
				sc.write(headWithSize(t, size))
				sc.hang()
				return "", true
			}))
			c := newClient(t, s.url(), Options{MaxHeaderBytes: max})
			resp, err := get(t, c, "/")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Fatalf("a %d-byte head was accepted under a %d-byte bound (body %q)", size, max, b)
			}
			if !strings.Contains(err.Error(), "over") {
				t.Errorf("error %q does not say the headers are over the bound", err)
			}
			s.waitEOF(t, 1)
		})
	}
	t.Run("over/one long status line", func(t *testing.T) {
		s := newRawServer(t, serveEach(func(sc *srvConn, _ *capturedReq) (string, bool) {
			sc.write("HTTP/1.1 200 " + strings.Repeat("O", 5000) + "\r\nContent-Length: 0\r\n\r\n")
			sc.hang()
			return "", true
		}))
		c := newClient(t, s.url(), Options{MaxHeaderBytes: max})
		if resp, err := get(t, c, "/"); err == nil {
			resp.Body.Close()
			t.Fatal("accepted")
		}
	})
	t.Run("default bound allows large heads", func(t *testing.T) {
		s := newRawServer(t, serveRaw(headWithSize(t, 100000)))
		c := newClient(t, s.url(), Options{})
		if _, body := mustGet(t, c, "/"); body != "ok" {
			t.Errorf("body = %q", body)
		}
	})
}

func TestChunkedWinsOverContentLength(t *testing.T) {
	s := newRawServer(t, serveRaw("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	c := newClient(t, s.url(), Options{})
	for range 2 {
		resp, body := mustGet(t, c, "/")
		if body != "hello" {
			t.Errorf("body = %q, want the chunked body", body)
		}
		if _, ok := resp.Header["Content-Length"]; ok {
			t.Errorf("Content-Length left in Header: %v", resp.Header)
		}
		if resp.ContentLength != -1 {
			t.Errorf("ContentLength = %d, want -1", resp.ContentLength)
		}
		if n := c.Idle(); n != 0 {
			t.Errorf("Idle() = %d, want 0: such a connection is not trusted again", n)
		}
	}
	if n := s.dials(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
}

func TestTruncatedBodies(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		got  string // what the body gives before the error
	}{
		{"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "hello"},
		{"Content-Length, no bytes", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", ""},
		{"chunked, in data", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "hel"},
		{"chunked, no last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "hello"},
		{"chunked, in trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n", "hello"},
		{"chunked, no final CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n", "hello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveRawClose(tt.raw))
			c := newClient(t, s.url(), Options{})
			resp, err := get(t, c, "/")
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("err = %v, want io.ErrUnexpectedEOF", err)
			}
			if string(b) != tt.got {
				t.Errorf("body = %q, want %q", b, tt.got)
			}
			// The error is sticky.
			if n, err2 := resp.Body.Read(make([]byte, 10)); n != 0 || err2 == nil {
				t.Errorf("Read after the error = %d, %v", n, err2)
			}
			if n := c.Idle(); n != 0 {
				t.Errorf("Idle() = %d, want 0", n)
			}
		})
	}
}

func TestBadChunkFraming(t *testing.T) {
	tests := []struct{ name, raw string }{
		{"bad size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"},
		{"missing CRLF after data", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRawServer(t, serveEach(func(sc *srvConn, _ *capturedReq) (string, bool) {
				sc.write(tt.raw)
				sc.hang()
				return "", true
			}))
			c := newClient(t, s.url(), Options{})
			resp, err := get(t, c, "/")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(resp.Body); err == nil {
				t.Error("bad chunked framing read without an error")
			}
			resp.Body.Close()
			s.waitEOF(t, 1)
		})
	}
}
