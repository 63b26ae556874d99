package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// llmBody is the fake upstream's answer: a small chat completion (~240 B).
var llmBody = []byte(`{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"phi3",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Smaug, the last of the great dragons."},` +
	`"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}`)

// reqBody is the body every compared request sends.
const reqBody = `{"model":"phi3","messages":[{"role":"user","content":"Name a dragon."}],"max_tokens":16}`

// upstream is the fake LLM: net/http on 127.0.0.1, no artificial delay.
type upstream struct {
	addr  string // host:port
	url   string
	srv   *http.Server
	calls atomic.Int64
	conns atomic.Int64 // connections accepted
}

func startUpstream() (*upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the fake upstream: %w", err)
	}
	u := &upstream{addr: ln.Addr().String()}
	u.url = "http://" + u.addr
	length := strconv.Itoa(len(llmBody))
	u.srv = &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				u.conns.Add(1)
			}
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.calls.Add(1)
			_, _ = io.Copy(io.Discard, r.Body)
			h := w.Header()
			h["Content-Type"] = []string{"application/json"}
			h["Content-Length"] = []string{length}
			_, _ = w.Write(llmBody)
		}),
	}
	go func() { _ = u.srv.Serve(ln) }()
	return u, nil
}

func (u *upstream) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = u.srv.Shutdown(ctx)
	_ = u.srv.Close()
}

// floorServer is the raw NDJSON echo server: one goroutine per connection,
// reads a line, writes a small fixed JSON answer line with the request's id
// (so that answers can be matched like fender's).
type floorServer struct {
	path  string
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// floorAnswer is the answer line after `{"id":ID`.
var floorAnswer = append(append([]byte(`,"ok":true,"status":200,"body":`), llmBody...), "}\n"...)

func startFloor(path string) (*floorServer, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen for the floor server: %w", err)
	}
	f := &floorServer{path: path, ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns[c] = struct{}{}
			f.mu.Unlock()
			f.wg.Add(1)
			go f.serve(c)
		}
	}()
	return f, nil
}

func (f *floorServer) serve(c net.Conn) {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReaderSize(c, 8<<10)
	bw := bufio.NewWriterSize(c, 8<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		_, _ = bw.WriteString(`{"id":`)
		_, _ = bw.Write(lineID(line))
		_, _ = bw.Write(floorAnswer)
		if br.Buffered() == 0 {
			if bw.Flush() != nil {
				return
			}
		}
	}
}

// lineID is the raw value of the first "id" field of an NDJSON request
// line written by this tool (a number), or null.
func lineID(line []byte) []byte {
	i := bytes.Index(line, []byte(`"id":`))
	if i < 0 {
		return []byte("null")
	}
	v := line[i+5:]
	j := bytes.IndexAny(v, ",}")
	if j <= 0 {
		return []byte("null")
	}
	return bytes.TrimSpace(v[:j])
}

// floorServeArg makes the tool serve as the floor process: bench
// -serve-floor SOCKET (internal, started by the tool itself).
const floorServeArg = "-serve-floor"

// serveFloor runs the floor server on sock until stdin closes or a
// SIGTERM/SIGINT comes.
func serveFloor(sock string) error {
	f, err := startFloor(sock)
	if err != nil {
		return err
	}
	defer f.close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	}
	return nil
}

func (f *floorServer) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
