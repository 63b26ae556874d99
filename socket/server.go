package socket

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/sidecar"
)

// Handler answers one request line: it appends exactly one answer line ("\n"
// included) to dst, after sending any chunk lines of a streamed answer
// through emit. ctx is cancelled with sidecar.ErrClientGone when the client
// leaves and with sidecar.ErrShuttingDown when the drain timeout ends. The
// handler keeps no reference to dst or the returned slice: the server
// reuses the buffer for later answers.
type Handler interface {
	Handle(ctx context.Context, peer sidecar.Peer, line []byte, dst []byte, emit sidecar.Emit) []byte
}

// FastHandler is an optional Handler extension. TryHandle answers line at
// once when that needs no waiting (a ping, a cache hit), so the reader can
// answer it without handing it to a worker. Otherwise it returns ok false
// and pre, the line as far as TryHandle understood it, which the worker
// passes to HandlePrepared instead of having the line decoded again (pre
// nil: use Handle). pre may refer to line's bytes: the line is the
// handler's from then on.
type FastHandler interface {
	TryHandle(peer sidecar.Peer, line []byte, dst []byte) (out []byte, ok bool, pre any)
	HandlePrepared(ctx context.Context, peer sidecar.Peer, pre any, dst []byte, emit sidecar.Emit) []byte
}

// Options configure a Server.
type Options struct {
	MaxRequestBytes int      // longest request line, without its line ending
	MaxConnInflight int      // requests in flight on one connection before reading pauses
	AllowedUIDs     []uint32 // empty: any
	Logger          zerolog.Logger
	Hooks           Hooks // nil: none
}

// Hooks receive connection events, for telemetry. Safe for concurrent use.
type Hooks interface {
	ConnOpened()
	ConnClosed()
	Rejected(reason string) // too_large, peer
}

type nopHooks struct{}

func (nopHooks) ConnOpened()     {}
func (nopHooks) ConnClosed()     {}
func (nopHooks) Rejected(string) {}

// Server serves request lines on a Unix listener. Serve, StopReading, Abort
// and Close are safe to call from different goroutines.
type Server struct {
	ln    *net.UnixListener
	h     Handler
	fast  FastHandler // h, when it has a fast path
	opts  Options
	log   zerolog.Logger
	hooks Hooks

	base    context.Context // parent of every request context
	abort   context.CancelCauseFunc
	conns   sync.WaitGroup
	workers *workers
	nwork   atomic.Int64 // request handlers in flight
	waited  atomic.Bool  // Idle was called: workAdd must look at idle
	workMu  sync.Mutex
	idle    []chan struct{} // closed when nwork reaches 0; guarded by workMu
	active  atomic.Int64

	mu       sync.Mutex
	open     map[*conn]struct{}
	stopping bool
	started  atomic.Bool
	served   chan struct{} // closed when Serve returns
}

// NewServer returns a Server for ln; it does not accept until Serve.
func NewServer(ln *net.UnixListener, h Handler, opts Options) *Server {
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = 1 << 20
	}
	if opts.MaxConnInflight <= 0 {
		opts.MaxConnInflight = 256
	}
	s := &Server{ln: ln, h: h, opts: opts, hooks: opts.Hooks, open: map[*conn]struct{}{}, served: make(chan struct{}), workers: newWorkers()}
	if s.hooks == nil {
		s.hooks = nopHooks{}
	}
	s.fast, _ = h.(FastHandler)
	s.log = opts.Logger.With().Str("component", "socket").Logger()
	s.base, s.abort = context.WithCancelCause(context.Background())
	return s
}

// Serve accepts connections until StopReading; it returns nil then.
func (s *Server) Serve() error {
	s.started.Store(true)
	defer close(s.served)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			stopping := s.stopping
			s.mu.Unlock()
			if stopping {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.log.Error().Err(err).Msg("accept")
			time.Sleep(50 * time.Millisecond) // EMFILE and the like: don't spin
			continue
		}
		peer := peerOf(c)
		if len(s.opts.AllowedUIDs) > 0 && (!peer.Known || !slices.Contains(s.opts.AllowedUIDs, peer.UID)) {
			s.log.Warn().Uint32("uid", peer.UID).Int32("pid", peer.PID).Bool("known", peer.Known).Msg("peer not allowed; closing")
			s.hooks.Rejected("peer")
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			c.Close()
			continue
		}
		cn := newConn(s, c, peer)
		s.open[cn] = struct{}{}
		s.conns.Add(1)
		s.mu.Unlock()
		s.active.Add(1)
		s.hooks.ConnOpened()
		go cn.serve()
	}
}

// Connections returns the connections open now.
func (s *Server) Connections() int64 { return s.active.Load() }

// StopReading stops accepting connections and reading request lines; the
// requests already read go on. It is the start of a drain.
func (s *Server) StopReading() {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	s.stopping = true
	for c := range s.open {
		c.stopReading()
	}
	s.mu.Unlock()
	s.ln.Close() // also removes the socket file
}

// Idle returns a channel closed once no request handler is in flight (after
// StopReading, no new one starts).
func (s *Server) Idle() <-chan struct{} {
	ch := make(chan struct{})
	s.workMu.Lock()
	defer s.workMu.Unlock()
	s.idle = append(s.idle, ch)
	s.waited.Store(true)
	s.wakeIdle()
	return ch
}

// workAdd counts handlers in flight without a lock on the request path:
// the lock is taken only when the count reaches 0 after Idle was called.
// Idle sets waited before it reads the count and workAdd changes the count
// before it reads waited, so one of them always sees the other.
func (s *Server) workAdd(d int64) {
	if s.nwork.Add(d) == 0 && s.waited.Load() {
		s.workMu.Lock()
		s.wakeIdle()
		s.workMu.Unlock()
	}
}

// wakeIdle closes the Idle channels when no handler is in flight; workMu
// is held.
func (s *Server) wakeIdle() {
	if s.nwork.Load() != 0 {
		return
	}
	for _, ch := range s.idle {
		close(ch)
	}
	s.idle = nil
}

// Abort cancels every request in flight with cause; each is still answered.
func (s *Server) Abort(cause error) { s.abort(cause) }

// Close stops reading (if not yet), writes the answers still queued, closes
// every connection and waits for their goroutines, up to ctx's deadline;
// past it, connections are closed at once. Requests still in flight are
// aborted with sidecar.ErrShuttingDown.
func (s *Server) Close(ctx context.Context) error {
	s.StopReading()
	done := make(chan struct{})
	go func() {
		s.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.abort(sidecar.ErrShuttingDown)
		s.mu.Lock()
		for c := range s.open {
			c.c.SetDeadline(time.Now())
		}
		s.mu.Unlock()
		<-done
	}
	if s.started.Load() {
		<-s.served
	}
	return nil
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.open, c)
	s.mu.Unlock()
	s.active.Add(-1)
	s.hooks.ConnClosed()
	s.conns.Done()
}
