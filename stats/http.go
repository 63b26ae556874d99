package stats

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Server serves GET /metrics, /healthz (200 while alive) and /readyz (200
// while serving, 503 once ready says otherwise) on its own http.Server.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	err  error
}

// Listen binds addr and starts serving before it returns. write writes the
// metrics; ready reports whether fender is serving (not draining).
func Listen(addr string, write func(io.Writer), ready func() bool) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		write(w)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "draining\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	s := &Server{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close shuts the server down, waiting for requests in flight up to ctx's
// deadline, then closing what is left.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	<-s.done
	if err == nil {
		err = s.err
	}
	return err
}

// Pusher pushes the metrics to a VictoriaMetrics import URL at an interval,
// with VictoriaMetrics/metrics' push support. A push that fails is logged by
// logErr and retried at the next tick; it never blocks requests.
type Pusher struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartPush starts pushing write's output to url every interval.
func StartPush(url string, interval time.Duration, write func(io.Writer), logErr func(format string, args ...any)) (*Pusher, error) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pusher{cancel: cancel}
	err := metricsPush(ctx, url, interval, write, logErr, &p.wg)
	if err != nil {
		cancel()
		return nil, err
	}
	return p, nil
}

// Close stops pushing and waits for the pusher to stop.
func (p *Pusher) Close() {
	p.cancel()
	p.wg.Wait()
}
