package h1

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
)

// readResponse reads the status line and headers of the final answer
// (skipping 1xx ones) and frames its body.
func (cn *conn) readResponse(ctx context.Context, method string) (*http.Response, error) {
	max := cn.c.maxHeaderBytes
	cn.lr.N = max
	var resp *http.Response
	for {
		var err error
		resp, err = cn.readHead()
		if err != nil {
			if cn.lr.N <= 0 {
				return nil, fmt.Errorf("h1: answer headers are over %d bytes", max)
			}
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, errors.New("h1: unexpected 101 Switching Protocols")
		}
		if resp.StatusCode >= 200 {
			break
		}
		cn.lr.N = max // each interim answer gets the whole bound
	}
	cn.lr.N = 1<<63 - 1

	h := resp.Header
	cn.reuse = resp.ProtoAtLeast(1, 1) && !hasToken(h["Connection"], "close") && !cn.closeAfter
	b := &body{cn: cn, ctx: ctx, n: -1}
	switch te := h["Transfer-Encoding"]; {
	case method == "HEAD" || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified:
		resp.ContentLength = 0
		if cls := h["Content-Length"]; len(cls) > 0 && method == "HEAD" {
			if cl, err := contentLength(cls); err == nil {
				resp.ContentLength = cl
			}
		}
		resp.Body = http.NoBody
		cn.done(true)
		return resp, nil
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(textproto.TrimString(te[0]), "chunked") {
			return nil, fmt.Errorf("h1: unsupported transfer encoding %q", te)
		}
		delete(h, "Transfer-Encoding")
		if _, ok := h["Content-Length"]; ok {
			// Both: chunked wins, and the connection is not trusted again
			// (RFC 9112 section 6.3).
			delete(h, "Content-Length")
			cn.reuse = false
		}
		resp.TransferEncoding = []string{"chunked"}
		resp.ContentLength = -1
		b.chunked = httputil.NewChunkedReader(cn.br)
	case len(h["Content-Length"]) > 0:
		n, err := contentLength(h["Content-Length"])
		if err != nil {
			return nil, err
		}
		resp.ContentLength = n
		if n == 0 {
			resp.Body = http.NoBody
			cn.done(true)
			return resp, nil
		}
		b.n = n
	default:
		// Delimited by the close of the connection.
		resp.ContentLength = -1
		cn.reuse = false
		b.eofDelimited = true
	}
	resp.Body = b
	return resp, nil
}

// readHead reads one status line and header block.
func (cn *conn) readHead() (*http.Response, error) {
	line, err := cn.tp.ReadLine()
	if err != nil {
		return nil, err
	}
	// As net/http reads it.
	proto, status, ok := strings.Cut(line, " ")
	if !ok {
		return nil, fmt.Errorf("h1: malformed HTTP response %q", line)
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok || major != 1 {
		return nil, fmt.Errorf("h1: malformed HTTP version %q", proto)
	}
	status = strings.TrimLeft(status, " ")
	codeText, _, _ := strings.Cut(status, " ")
	code, err := strconv.Atoi(codeText)
	if len(codeText) != 3 || err != nil || code < 100 {
		return nil, fmt.Errorf("h1: malformed HTTP status code %q", codeText)
	}
	mh, err := cn.tp.ReadMIMEHeader()
	if err != nil {
		return nil, err
	}
	return &http.Response{
		Status: status, StatusCode: code,
		Proto: proto, ProtoMajor: major, ProtoMinor: minor,
		Header: http.Header(mh),
	}, nil
}

// contentLength parses Content-Length values: all the same, a decimal
// number of at most 18 digits.
func contentLength(vs []string) (int64, error) {
	first := textproto.TrimString(vs[0])
	for _, v := range vs[1:] {
		if textproto.TrimString(v) != first {
			return 0, fmt.Errorf("h1: conflicting Content-Length values %q", vs)
		}
	}
	if first == "" || len(first) > 18 || strings.Trim(first, "0123456789") != "" {
		return 0, fmt.Errorf("h1: bad Content-Length %q", first)
	}
	return strconv.ParseInt(first, 10, 64)
}

// hasToken reports whether a comma-separated header holds token (any case).
func hasToken(vs []string, token string) bool {
	for _, v := range vs {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

// body is an answer's body on its connection. Reading it to its end gives
// the connection back (when the answer allows reuse); closing it before
// then closes the connection. Exactly one of the two acts on the
// connection, since the connection may be another exchange's afterwards.
type body struct {
	cn           *conn
	ctx          context.Context
	n            int64     // Content-Length bytes left; -1 when not framed so
	chunked      io.Reader // chunked framing
	eofDelimited bool      // ends with the connection
	err          error     // sticky: the end or failure already met
	over         atomic.Bool
	closed       atomic.Bool
}

var errClosedBody = errors.New("h1: read on closed response body")

func (b *body) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errClosedBody
	}
	if b.err != nil {
		return 0, b.err
	}
	var n int
	var err error
	switch {
	case b.chunked != nil:
		n, err = b.chunked.Read(p)
		if err == io.EOF {
			if terr := b.cn.skipTrailer(); terr != nil {
				err = terr
			}
		}
	case b.n >= 0:
		if int64(len(p)) > b.n {
			p = p[:b.n]
		}
		n, err = b.cn.br.Read(p)
		b.n -= int64(n)
		switch {
		case b.n == 0:
			err = io.EOF
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
	default:
		n, err = b.cn.br.Read(p)
	}
	if err != nil {
		clean := err == io.EOF
		if !clean {
			err = wrapErr(b.ctx, err)
		}
		b.err = err
		if b.over.CompareAndSwap(false, true) {
			b.cn.done(clean && !b.eofDelimited)
		}
	}
	return n, err
}

// Close ends the exchange; a body not read to its end closes the
// connection.
func (b *body) Close() error {
	b.closed.Store(true)
	if b.over.CompareAndSwap(false, true) {
		b.cn.fail()
	}
	return nil
}

// skipTrailer reads the trailer section after the last chunk, up to the
// blank line that ends the answer; trailer fields are dropped.
func (cn *conn) skipTrailer() error {
	for range 1024 {
		line, err := cn.br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("h1: reading the trailer: %w", err)
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
	return errors.New("h1: too many trailer fields")
}

// target is the request target for path p: the URL's path then p, sent as
// it is when it needs no escaping, else as net/http would send it.
func (c *Client) target(p string) (string, error) {
	if p == "" || p[0] != '/' {
		return "", fmt.Errorf("path %q does not start with /", p)
	}
	if plainTarget(p) {
		if c.prefix == "" {
			return p, nil
		}
		return c.prefix + p, nil
	}
	u, err := url.Parse(c.base + p)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", err
	}
	return u.RequestURI(), nil
}

// plainTarget reports whether p is a path of RFC 3986 pchars (no '%') and
// '/', then optionally a query of printable ASCII without '#': the bytes
// url.Parse and RequestURI give back unchanged.
func plainTarget(p string) bool {
	inQuery := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c <= ' ' || c >= 0x7f || c == '#':
			return false
		case inQuery:
		case c == '?':
			inQuery = true
		case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// checkHeader refuses what cannot be written as a header line: a name that
// is not a token, a value with a control character other than tab.
func checkHeader(h http.Header) error {
	for k, vs := range h {
		if !IsToken(k) {
			return fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vs {
			if !ValidHeaderValue(v) {
				return fmt.Errorf("invalid value for header %q", k)
			}
		}
	}
	return nil
}

// IsToken reports whether s is an RFC 9110 token: a method or header name.
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// ValidHeaderValue reports whether v may be sent as a header value: no
// control character other than tab (RFC 9110 section 5.5).
func ValidHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
