package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Emit sends one line (a chunk line, "\n" included) to the client before the
// final answer. It blocks while the client's connection is backed up, which
// is what slows the upstream read of a slow reader, and fails once the
// connection is gone. The line is the callee's after the call.
type Emit func(line []byte) error

// errIdle cancels a stream attempt that received nothing for its timeout.
var errIdle = errors.New("stream idle timeout")

// errTooLarge is a stream that went past FENDER_MAX_RESPONSE_BYTES.
var errTooLarge = errors.New("stream over the response size limit")

// framing is how an upstream body is cut into chunks.
type framing uint8

const (
	framingRaw    framing = iota // one chunk per read
	framingSSE                   // one chunk per server-sent event: its data
	framingNDJSON                // one chunk per line
)

func framingOf(h http.Header) framing {
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	switch mt {
	case "text/event-stream":
		return framingSSE
	case "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines", "application/jsonlines":
		return framingNDJSON
	}
	return framingRaw
}

// idleTimer cancels a stream when no data arrives for its timeout.
type idleTimer struct {
	d time.Duration
	t *time.Timer
}

func newIdleTimer(d time.Duration, fire func()) *idleTimer {
	return &idleTimer{d: d, t: time.AfterFunc(d, fire)}
}

func (i *idleTimer) reset() { i.t.Reset(i.d) }
func (i *idleTimer) stop()  { i.t.Stop() }

// upstreamStream is a 2xx streamed answer being read, its first chunk
// already taken (the attempt ends there: retries and fallbacks happen only
// before the first chunk is sent).
type upstreamStream struct {
	body    io.ReadCloser
	br      *bufio.Reader
	framing framing
	idle    *idleTimer
	cancel  context.CancelCauseFunc
	ctx     context.Context // the attempt's: ends with the idle timeout too
	limit   int64           // bytes of chunks still allowed
	first   []byte          // nil when the body ended before any chunk
	ended   bool            // the body ended cleanly
	carry   []byte          // the start of a character cut off by the last read
	once    sync.Once
}

func (st *upstreamStream) close() {
	st.once.Do(func() {
		st.idle.stop()
		st.cancel(nil)
		st.body.Close()
	})
}

// next returns the next chunk; io.EOF when the body ended cleanly.
func (st *upstreamStream) next() ([]byte, error) {
	if st.ended {
		return nil, io.EOF
	}
	var c []byte
	var err error
	switch st.framing {
	case framingSSE:
		c, err = st.nextEvent()
	case framingNDJSON:
		c, err = st.nextLine()
	default:
		c, err = st.nextRead()
	}
	if err == io.EOF {
		st.ended = true
	}
	if c != nil {
		st.idle.reset()
		if st.limit -= int64(len(c)); st.limit < 0 {
			return nil, errTooLarge
		}
	}
	return c, err
}

// nextRead returns what one read brings, cut at a UTF-8 character boundary:
// a character split across reads is held back and sent whole with the next
// chunk, so that chunk strings never carry half a character.
func (st *upstreamStream) nextRead() ([]byte, error) {
	buf := make([]byte, len(st.carry), 32<<10)
	copy(buf, st.carry)
	st.carry = nil
	for {
		n, err := st.br.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			st.idle.reset()
		}
		if err != nil {
			if len(buf) > 0 && err == io.EOF {
				return buf, nil // the end: send what is left as it is
			}
			return nil, err
		}
		if cut := incompleteTail(buf); cut < len(buf) && cut > 0 {
			st.carry = append([]byte(nil), buf[cut:]...)
			return buf[:cut], nil
		} else if cut == len(buf) {
			return buf, nil
		}
		// Only part of one character so far: read on.
	}
}

// incompleteTail returns where a UTF-8 character cut off at the end of b
// starts, or len(b) when b ends on a character boundary (or is not UTF-8
// there at all, in which case there is nothing to wait for).
func incompleteTail(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if c := b[i]; c < utf8.RuneSelf {
			return len(b)
		} else if utf8.RuneStart(c) {
			if utf8.FullRune(b[i:]) {
				return len(b)
			}
			return i
		}
	}
	return len(b)
}

// line reads one line without its "\n" or "\r\n", bounded by the limit.
func (st *upstreamStream) line() ([]byte, error) {
	var line []byte
	for {
		frag, err := st.br.ReadSlice('\n')
		if len(frag) > 0 {
			st.idle.reset() // bytes arrived: SSE comments and heartbeats count
		}
		line = append(line, frag...)
		if int64(len(line)) > st.limit+2 {
			return nil, errTooLarge
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(line) > 0 {
			err = nil
			st.ended = true
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		return bytes.TrimSuffix(line, []byte("\r")), err
	}
}

func (st *upstreamStream) nextLine() ([]byte, error) {
	for {
		l, err := st.line()
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(l)) > 0 {
			return l, nil
		}
		if st.ended {
			return nil, io.EOF
		}
	}
}

// nextEvent returns the data of the next server-sent event (its data lines
// joined by "\n"); events without data, comments and other fields are
// skipped. An event cut off by a clean end of the body is still returned.
func (st *upstreamStream) nextEvent() ([]byte, error) {
	var data []byte
	has := false
	for {
		l, err := st.line()
		if err != nil {
			if err == io.EOF && has {
				st.ended = true
				return data, nil
			}
			return nil, err
		}
		if len(l) == 0 {
			if has {
				return data, nil
			}
			if st.ended {
				return nil, io.EOF
			}
			continue
		}
		if v, ok := bytes.CutPrefix(l, []byte("data")); ok && (len(v) == 0 || v[0] == ':') {
			v = bytes.TrimPrefix(v, []byte(":"))
			v = bytes.TrimPrefix(v, []byte(" "))
			if has {
				data = append(data, '\n')
			}
			data = append(data, v...)
			has = true
		}
		if st.ended {
			if has {
				return data, nil
			}
			return nil, io.EOF
		}
	}
}

// openStream takes a 2xx streamed answer and reads up to its first chunk.
func openStream(actx context.Context, cancel context.CancelCauseFunc, idle *idleTimer, resp *http.Response, limit int64) (*upstreamStream, error) {
	st := &upstreamStream{
		body: resp.Body, br: bufio.NewReaderSize(resp.Body, 32<<10), framing: framingOf(resp.Header),
		idle: idle, cancel: cancel, ctx: actx, limit: limit,
	}
	first, err := st.next()
	if err != nil && err != io.EOF {
		return nil, err
	}
	st.first = first
	return st, nil
}

// pump sends the chunks of res's stream to the client, then completes res
// as the final answer: meta.chunks and meta.bytes, no body, and a failure if
// the stream did not end cleanly (or without the policy's stream_end).
func (s *Service) pump(ctx context.Context, id []byte, upName string, lp *livePolicy, res *Result, emit Emit, start time.Time) {
	st := res.stream
	res.stream = nil
	defer st.close()
	res.Body, res.encoded = nil, nil
	res.Meta.streamed = true
	var last []byte
	send := func(c []byte) error {
		if res.Meta.Chunks == 0 {
			d := time.Since(start)
			s.rec.FirstChunk(upName, d)
			s.hooks.FirstChunk(upName, d)
		}
		res.Meta.Chunks++
		res.Meta.Bytes += int64(len(c))
		last = c
		// Waiting on a slow client is back-pressure, not an idle upstream.
		st.idle.stop()
		defer st.idle.reset()
		return emit(appendChunk(make([]byte, 0, len(c)+len(id)+24), id, c))
	}
	c, err := st.first, error(nil)
	if c == nil {
		err = io.EOF
	}
	for err == nil {
		if eerr := send(c); eerr != nil {
			res.Err = streamFailure(ctx, st.ctx, eerr, lp)
			return
		}
		c, err = st.next()
	}
	if err != io.EOF {
		res.Err = streamFailure(ctx, st.ctx, err, lp)
		return
	}
	if lp.StreamEnd != "" && !bytes.Contains(last, []byte(lp.StreamEnd)) {
		res.Err = Errorf(CodeUnavailable, "stream ended without a last chunk containing %q: truncated", lp.StreamEnd)
	}
}

// streamFailure names what ended a stream after its first chunk.
func streamFailure(ctx, sctx context.Context, err error, lp *livePolicy) *Error {
	if errors.Is(err, errTooLarge) {
		return Errorf(CodeTooLarge, "stream is over the response size limit")
	}
	if ctx.Err() != nil {
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, ErrShuttingDown):
			return Errorf(CodeShuttingDown, "drain timeout ended the stream")
		case errors.Is(cause, ErrClientGone):
			return Errorf(CodeUnavailable, "client disconnected")
		}
		return Errorf(CodeTimeout, "deadline passed during the stream")
	}
	if errors.Is(context.Cause(sctx), errIdle) {
		return Errorf(CodeTimeout, "stream idle for more than %s", lp.Timeout)
	}
	msg := err.Error()
	if errors.Is(err, io.ErrUnexpectedEOF) {
		msg = "upstream body cut short"
	}
	return Errorf(CodeUnavailable, "stream broken: %s", strings.TrimSpace(msg))
}

// appendChunk appends a chunk line: {"id":ID,"chunk":"..."}.
func appendChunk(dst, id, chunk []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"chunk":`...)
	dst = appendString(dst, string(chunk))
	return append(dst, "}\n"...)
}
