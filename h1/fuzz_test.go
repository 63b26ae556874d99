package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"runtime/debug"
	"testing"
	"time"
)

// pipeConn builds, around one end of a net.Pipe, a *conn as Client.get
// builds one around a TCP connection, and feeds data into the other end
// (then closes it). The returned func closes both ends and waits for the
// feeder.
func pipeConn(c *Client, data []byte) (*conn, func()) {
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		server.Write(data)
		server.Close()
	}()
	c.mu.Lock()
	cn := &conn{c: c, nc: client, gen: c.gen}
	c.mu.Unlock()
	cn.lr = io.LimitedReader{R: client}
	cn.br = bufio.NewReaderSize(&cn.lr, bufSize)
	cn.bw = bufio.NewWriterSize(client, bufSize)
	cn.tp = textproto.NewReader(cn.br)
	return cn, func() {
		client.Close()
		server.Close()
		<-done
	}
}

// readPiped runs readResponse on data as the answer to method and reads
// the body; a panic is recovered and returned in panicked.
func readPiped(c *Client, method string, data []byte) (resp *http.Response, body []byte, herr, berr error, panicked error) {
	cn, cleanup := pipeConn(c, data)
	defer cleanup()
	defer func() {
		if p := recover(); p != nil {
			panicked = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cn.state.Store(busy)
	cn.stop = context.AfterFunc(ctx, cn.interrupt)
	resp, herr = cn.readResponse(ctx, method)
	if herr != nil {
		cn.fail()
		return
	}
	body, berr = io.ReadAll(resp.Body)
	resp.Body.Close()
	return
}

func FuzzReadResponse(f *testing.F) {
	seeds := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.0 200 OK\r\n\r\nuntil the end",
		"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\n\r\n",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/2.0 200 OK\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"garbage",
		"",
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	c := newClient(f, "http://127.0.0.1:1/", Options{MaxHeaderBytes: 512})
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		resp, body, herr, berr, panicked := readPiped(c, method, data)
		c.CloseIdle()
		if panicked != nil {
			t.Fatalf("readResponse(%s) of %q: %v", method, data, panicked)
		}
		if herr != nil {
			return
		}
		if resp.StatusCode < 200 || resp.StatusCode == 101 || resp.StatusCode > 999 {
			t.Fatalf("status %d returned", resp.StatusCode)
		}
		if resp.Body == http.NoBody {
			if len(body) != 0 {
				t.Fatalf("NoBody gave %q", body)
			}
			if resp.ContentLength != 0 && method != "HEAD" {
				t.Fatalf("NoBody with ContentLength %d", resp.ContentLength)
			}
			return
		}
		if resp.ContentLength >= 0 {
			// Framed by Content-Length: never more bytes than that, and
			// exactly that many unless the read failed.
			if int64(len(body)) > resp.ContentLength {
				t.Fatalf("ContentLength %d but %d body bytes", resp.ContentLength, len(body))
			}
			if berr == nil && int64(len(body)) != resp.ContentLength {
				t.Fatalf("ContentLength %d but %d body bytes and no error", resp.ContentLength, len(body))
			}
			if berr != nil && !errors.Is(berr, io.ErrUnexpectedEOF) {
				t.Fatalf("Content-Length body read error %v", berr)
			}
			if !bytes.Contains(data, body) {
				t.Fatalf("body %q is not in the input", body)
			}
		}
	})
}

func TestReadResponseOverPipe(t *testing.T) {
	c := newClient(t, "http://127.0.0.1:1/", Options{})
	tests := []struct {
		method, data, body string
		cl                 int64
		pooled             bool
	}{
		{"GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "hello", 5, true},
		{"GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "hello", -1, true},
		{"GET", "HTTP/1.1 200 OK\r\n\r\nhello", "hello", -1, false},
		{"GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello", "hello", 5, false},
		{"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "", 5, true},
	}
	for _, tt := range tests {
		resp, body, herr, berr, panicked := readPiped(c, tt.method, []byte(tt.data))
		if panicked != nil || herr != nil || berr != nil {
			t.Errorf("%q: %v %v %v", tt.data, panicked, herr, berr)
			continue
		}
		if string(body) != tt.body || resp.ContentLength != tt.cl {
			t.Errorf("%q: body %q ContentLength %d", tt.data, body, resp.ContentLength)
		}
		if got := c.Idle() == 1; got != tt.pooled {
			t.Errorf("%q: pooled = %v, want %v", tt.data, got, tt.pooled)
		}
		c.CloseIdle()
	}
}
