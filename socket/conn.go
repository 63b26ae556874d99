package socket

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fender-sidecar/fender/sidecar"
)

// conn is one client connection: a reader that frames request lines and
// starts a handler for each, and a writer that sends the answers in the order
// they are ready. A request holds one of MaxConnInflight slots from the
// moment its line is read until its answer is written, so a client that does
// not read its answers stops its own reader, and only its own.
type conn struct {
	s               *Server
	c               *net.UnixConn
	peer            sidecar.Peer
	ctx             context.Context
	stop            context.CancelCauseFunc
	slots           chan struct{}
	work            sync.WaitGroup
	br              *bufio.Reader // used by one reader goroutine at a time, as are:
	lineBuf, outBuf []byte        // the line being read and a fast answer, reused

	// Answers are written by the goroutine that made them, under wmu, with
	// no writer goroutine to hand them to (a handoff costs a thread wake-up
	// per answer). Writes are group-committed: the last of the goroutines
	// waiting to write flushes for all of them.
	wmu     sync.Mutex
	bw      *bufio.Writer
	broken  bool         // a write failed: the client is gone; guarded by wmu
	waiting atomic.Int32 // goroutines about to take wmu
}

func newConn(s *Server, c *net.UnixConn, peer sidecar.Peer) *conn {
	ctx, stop := context.WithCancelCause(s.base)
	return &conn{
		s: s, c: c, peer: peer, ctx: ctx, stop: stop,
		slots: make(chan struct{}, s.opts.MaxConnInflight),
		bw:    bufio.NewWriterSize(c, writeBufSize),
	}
}

// stopReading makes a blocked or future read return at once.
func (c *conn) stopReading() { c.c.SetReadDeadline(time.Now()) }

func (c *conn) serve() {
	c.br = bufio.NewReaderSize(c.c, readBufSize)
	c.readLoop()
}

// readLoop reads request lines until the connection ends; the reader that
// meets the end waits for the connection's requests and cleans up.
//
// Lines that need no waiting (pings, cache hits) it answers itself. A line
// that does, on a connection with nothing else in flight and nothing more
// read, it also handles itself: handing it to a worker would wake a second
// thread for every request of a client that sends one at a time, which on
// a small machine costs more than the request (about 20 µs of p50 in
// scripts/bench). If that request is not done within takeover, a worker
// takes over reading, so a client that does send more waits at most that
// long for its next line to be read. Other lines go to workers at once.
func (c *conn) readLoop() {
	end, line, pre := c.read()
	for line != nil {
		if len(c.slots) == 1 && c.br.Buffered() == 0 {
			tk := time.AfterFunc(takeover, func() { c.s.workers.run(task{c: c, read: true}) })
			c.handle(line, pre)
			if !tk.Stop() {
				return // a worker reads the connection now
			}
		} else {
			c.s.workers.run(task{c: c, line: line, pre: pre})
		}
		end, line, pre = c.read()
	}
	switch end {
	case endEOF:
		// The client closed its side for writing; it may still read the
		// answers (half-close), or be gone. Watch for the latter.
		watchDone := make(chan struct{})
		go c.watchHangup(watchDone)
		c.work.Wait()
		close(watchDone)
	case endBroken:
		c.stop(sidecar.ErrClientGone)
		c.work.Wait()
	default:
		c.work.Wait()
	}
	c.stop(sidecar.ErrClientGone)
	c.c.Close()
	c.s.forget(c)
}

// takeover is how long a reader handles a request itself before another
// goroutine takes over reading the connection (see readLoop).
const takeover = time.Millisecond

// Per-connection buffers: small, since a sidecar may hold thousands of idle
// connections; longer lines are assembled across reads.
const (
	readBufSize  = 8 << 10
	writeBufSize = 8 << 10
)

// How reading a connection ended.
const (
	endEOF    = iota // the client closed its side for writing
	endBroken        // a read error: the client is gone
	endStop          // StopReading or an aborted connection
)

// read frames request lines until one needs a handler (returned with what
// the fast path made of it, its slot taken and counted as work), or until
// EOF, an error or StopReading.
// A read error met after a returned line is met again by the next call.
// Lines that can be answered at once are answered here.
func (c *conn) read() (end int, line []byte, pre any) {
	max := c.s.opts.MaxRequestBytes
	for {
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return endStop, nil, nil
		}
		line, tooLarge, err := readLineInto(c.br, max, c.lineBuf)
		if cap(line) <= 64<<10 {
			c.lineBuf = line[:0] // reused for the next line, unless huge
		}
		if err != nil && len(line) == 0 && !tooLarge {
			<-c.slots
			return c.readEnd(err), nil, nil
		}
		switch {
		case tooLarge:
			c.s.hooks.Rejected("too_large")
			c.send(sidecar.AppendError(nil, nil, sidecar.Errorf(sidecar.CodeTooLarge, "request line is over %d bytes", max)), true)
		case len(bytes.TrimSpace(line)) == 0:
			<-c.slots
		default:
			out, ok, pre := c.fast(line)
			if ok {
				c.send(out, true)
				if cap(out) <= 64<<10 {
					c.outBuf = out[:0]
				}
			} else {
				c.lineBuf = nil // the line is the handler's now (pre may point into it)
				c.work.Add(1)
				c.s.workAdd(1)
				return 0, line, pre
			}
		}
		if err != nil {
			return c.readEnd(err), nil, nil
		}
	}
}

func (c *conn) readEnd(err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		return endEOF
	case errors.As(err, &ne) && ne.Timeout():
		return endStop
	}
	return endBroken
}

// handle answers line with the Handler, or pre with the FastHandler; the
// line's slot and work count were taken by read.
func (c *conn) handle(line []byte, pre any) {
	defer c.s.workAdd(-1)
	defer c.work.Done()
	bp := answerBufs.Get().(*[]byte)
	var out []byte
	if pre != nil {
		out = c.s.fast.HandlePrepared(c.ctx, c.peer, pre, (*bp)[:0], c.emit)
	} else {
		out = c.s.h.Handle(c.ctx, c.peer, line, (*bp)[:0], c.emit)
	}
	c.send(out, true)
	if cap(out) <= 64<<10 { // a rare huge answer is left to the collector
		*bp = out
		answerBufs.Put(bp)
	}
}

// answerBufs holds the buffers answers are encoded into; an answer is
// copied into the connection's writer before its buffer goes back.
var answerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// fast answers line in the reader when the handler can do so without
// waiting (pings, cache hits): no worker to wake. Otherwise it returns what
// the handler made of the line for the worker.
func (c *conn) fast(line []byte) ([]byte, bool, any) {
	if c.s.fast == nil {
		return nil, false, nil
	}
	if c.outBuf == nil {
		c.outBuf = make([]byte, 0, 1024)
	}
	return c.s.fast.TryHandle(c.peer, line, c.outBuf[:0])
}

// emit sends a chunk line of a streamed answer. It blocks while the client
// is not reading, so a slow client slows its streams' upstream reads, and
// fails once the connection is gone.
func (c *conn) emit(line []byte) error {
	if err := context.Cause(c.ctx); err != nil {
		return err
	}
	if !c.send(line, false) {
		return sidecar.ErrClientGone
	}
	return nil
}

// send writes one line; a final answer gives back its request's slot. It
// reports whether the connection still works.
func (c *conn) send(line []byte, final bool) bool {
	c.waiting.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	last := c.waiting.Add(-1) == 0
	if !c.broken {
		_, err := c.bw.Write(line)
		if err == nil && last {
			err = c.bw.Flush() // the others waiting will flush after us
		}
		if err != nil {
			c.broken = true
			c.stop(sidecar.ErrClientGone)
		}
	}
	if final {
		<-c.slots
	}
	return !c.broken
}

// readLine returns the next line without its "\n" or "\r\n", as a copy that
// the caller owns. A line over max bytes is read and dropped whole, with
// tooLarge set: the reader never holds more than max bytes of it. A last line
// without "\n" before EOF is returned with err io.EOF.
func readLine(br *bufio.Reader, max int) (line []byte, tooLarge bool, err error) {
	return readLineInto(br, max, nil)
}

// readLineInto is readLine assembling the line in buf (reused: the line is
// the caller's only until the next call).
func readLineInto(br *bufio.Reader, max int, buf []byte) (line []byte, tooLarge bool, err error) {
	line = buf[:0]
	for {
		frag, e := br.ReadSlice('\n')
		if !tooLarge {
			if len(line)+len(frag) > max+2 { // room for "\r\n"
				tooLarge = true
				line = nil
			} else {
				line = append(line, frag...)
			}
		}
		if e == bufio.ErrBufferFull {
			continue
		}
		if tooLarge {
			return nil, true, e
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > max {
			return nil, true, e
		}
		return line, false, e
	}
}

// watchHangup cancels the connection's requests when the client has closed
// the socket entirely (POLLHUP), as opposed to a half-close after which it
// still reads its answers. It polls, since Go's poller does not report HUP.
func (c *conn) watchHangup(done <-chan struct{}) {
	raw, err := c.c.SyscallConn()
	if err != nil {
		return
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		hup := false
		raw.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLHUP}}
			if n, err := unix.Poll(fds, 0); err == nil && n > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
				hup = true
			}
		})
		if hup {
			c.stop(sidecar.ErrClientGone)
			return
		}
	}
}

// peerOf reads the client's credentials with SO_PEERCRED.
func peerOf(c *net.UnixConn) sidecar.Peer {
	var p sidecar.Peer
	raw, err := c.SyscallConn()
	if err != nil {
		return p
	}
	raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			p = sidecar.Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Known: true}
		}
	})
	return p
}
