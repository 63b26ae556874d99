package socket

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
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
	s     *Server
	c     *net.UnixConn
	peer  sidecar.Peer
	ctx   context.Context
	stop  context.CancelCauseFunc
	slots chan struct{}
	out   chan message
	work  sync.WaitGroup
}

// message is a line to write: a final answer, which gives back its
// request's slot once written, or a chunk of a streamed answer.
type message struct {
	b     []byte
	final bool
}

func newConn(s *Server, c *net.UnixConn, peer sidecar.Peer) *conn {
	ctx, stop := context.WithCancelCause(s.base)
	return &conn{
		s: s, c: c, peer: peer, ctx: ctx, stop: stop,
		slots: make(chan struct{}, s.opts.MaxConnInflight),
		out:   make(chan message, s.opts.MaxConnInflight),
	}
}

// stopReading makes a blocked or future read return at once.
func (c *conn) stopReading() { c.c.SetReadDeadline(time.Now()) }

func (c *conn) serve() {
	defer c.s.forget(c)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.write()
	}()
	switch c.read() {
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
	close(c.out)
	<-writerDone
	c.stop(sidecar.ErrClientGone)
	c.c.Close()
}

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

// read frames request lines until EOF, an error or StopReading.
func (c *conn) read() int {
	br := bufio.NewReaderSize(c.c, readBufSize)
	max := c.s.opts.MaxRequestBytes
	for {
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return endStop
		}
		line, tooLarge, err := readLine(br, max)
		if err != nil && len(line) == 0 && !tooLarge {
			<-c.slots
			return c.readEnd(err)
		}
		if tooLarge {
			c.s.hooks.Rejected("too_large")
			c.out <- message{sidecar.AppendError(nil, nil, sidecar.Errorf(sidecar.CodeTooLarge, "request line is over %d bytes", max)), true}
		} else if len(bytes.TrimSpace(line)) == 0 {
			<-c.slots
		} else {
			c.dispatch(line)
		}
		if err != nil {
			return c.readEnd(err)
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

func (c *conn) dispatch(line []byte) {
	c.work.Add(1)
	c.s.workAdd(1)
	go func() {
		defer c.s.workAdd(-1)
		defer c.work.Done()
		c.out <- message{c.s.h.Handle(c.ctx, c.peer, line, make([]byte, 0, 512), c.emit), true}
	}()
}

// emit queues a chunk line of a streamed answer. It blocks while the queue
// is full, so a client that reads slowly slows its streams' upstream reads,
// and fails once the connection is gone.
func (c *conn) emit(line []byte) error {
	select {
	case c.out <- message{b: line}:
		return nil
	case <-c.ctx.Done():
		return context.Cause(c.ctx)
	}
}

// readLine returns the next line without its "\n" or "\r\n", as a copy that
// the caller owns. A line over max bytes is read and dropped whole, with
// tooLarge set: the reader never holds more than max bytes of it. A last line
// without "\n" before EOF is returned with err io.EOF.
func readLine(br *bufio.Reader, max int) (line []byte, tooLarge bool, err error) {
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

// write sends answers until out is closed. A write error means the client is
// gone: its requests are cancelled and the rest of the answers dropped.
func (c *conn) write() {
	bw := bufio.NewWriterSize(c.c, writeBufSize)
	broken := false
	for m := range c.out {
		if !broken {
			if _, err := bw.Write(m.b); err != nil {
				broken = true
			}
		}
		if m.final {
			<-c.slots
		}
		if len(c.out) == 0 && !broken {
			if err := bw.Flush(); err != nil {
				broken = true
			}
		}
		if broken {
			c.stop(sidecar.ErrClientGone)
		}
	}
	if !broken {
		bw.Flush()
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
