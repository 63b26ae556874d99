package sidecar

import (
	"bytes"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Meta is the `meta` object of a call's answer.
type Meta struct {
	Upstream  string
	Model     string
	Attempts  int
	Cached    bool
	Stale     bool
	Coalesced bool
	Fallback  string
	Breaker   string
	LatencyMs float64
	Chunks    int   // streamed answers only
	Bytes     int64 // streamed answers only: bytes of the chunks
	streamed  bool
}

// Result is the outcome of a call: an upstream answer (Status > 0), an error,
// or both (a failing upstream answer).
type Result struct {
	Status  int
	Header  http.Header
	Body    []byte
	encoded []byte          // `"headers":..,"body":..` already encoded (a cache entry's)
	stream  *upstreamStream // a streamed answer not yet sent
	Err     *Error
	Meta    Meta
	hasMeta bool
}

var nullID = []byte("null")

// AppendError appends the answer line of a failure without meta or upstream
// answer: the errors of decoding, admission and admin ops. id nil is null.
func AppendError(dst []byte, id []byte, e *Error) []byte {
	return appendResult(dst, id, &Result{Err: e})
}

// AppendAnswer appends the answer line of an upstream answer with its meta,
// as fender writes it: for Go programs that embed the pipeline, and for
// scripts/jsoncompare, which measures this encoder against JSON libraries.
func AppendAnswer(dst []byte, id []byte, status int, header http.Header, body []byte, meta Meta) []byte {
	return appendResult(dst, id, &Result{Status: status, Header: header, Body: body, Meta: meta, hasMeta: true})
}

// appendResult appends r's answer line, "\n" included.
func appendResult(dst []byte, id []byte, r *Result) []byte {
	if id == nil {
		id = nullID
	}
	dst = append(dst, `{"id":`...)
	dst = append(dst, id...)
	if r.Err == nil {
		dst = append(dst, `,"ok":true`...)
	} else {
		dst = append(dst, `,"ok":false,"error":{"code":`...)
		dst = appendString(dst, string(r.Err.Code))
		dst = append(dst, `,"message":`...)
		dst = appendString(dst, r.Err.Message)
		dst = append(dst, `,"retryable":`...)
		dst = strconv.AppendBool(dst, r.Err.Retryable)
		dst = append(dst, '}')
	}
	if r.Status > 0 {
		dst = append(dst, `,"status":`...)
		dst = strconv.AppendInt(dst, int64(r.Status), 10)
		if r.encoded != nil {
			dst = append(dst, ',')
			dst = append(dst, r.encoded...)
		} else {
			dst = append(dst, `,"headers":`...)
			dst = appendHeaders(dst, r.Header)
			if !r.Meta.streamed { // else the body went out as chunks
				dst = append(dst, `,"body":`...)
				dst = appendBody(dst, r.Body)
			}
		}
	}
	if r.hasMeta {
		m := &r.Meta
		dst = append(dst, `,"meta":{"upstream":`...)
		dst = appendString(dst, m.Upstream)
		dst = append(dst, `,"model":`...)
		dst = appendString(dst, m.Model)
		dst = append(dst, `,"attempts":`...)
		dst = strconv.AppendInt(dst, int64(m.Attempts), 10)
		dst = append(dst, `,"cached":`...)
		dst = strconv.AppendBool(dst, m.Cached)
		dst = append(dst, `,"stale":`...)
		dst = strconv.AppendBool(dst, m.Stale)
		dst = append(dst, `,"coalesced":`...)
		dst = strconv.AppendBool(dst, m.Coalesced)
		dst = append(dst, `,"fallback":`...)
		dst = appendString(dst, m.Fallback)
		dst = append(dst, `,"breaker":`...)
		dst = appendString(dst, m.Breaker)
		dst = append(dst, `,"latency_ms":`...)
		dst = strconv.AppendFloat(dst, m.LatencyMs, 'f', 3, 64)
		if m.streamed {
			dst = append(dst, `,"chunks":`...)
			dst = strconv.AppendInt(dst, int64(m.Chunks), 10)
			dst = append(dst, `,"bytes":`...)
			dst = strconv.AppendInt(dst, m.Bytes, 10)
		}
		dst = append(dst, '}')
	}
	return append(dst, "}\n"...)
}

// appendHeaders writes h as an object of strings, names sorted, the values of a
// repeated header joined with ", ".
func appendHeaders(dst []byte, h http.Header) []byte {
	var stack [16]string
	names := stack[:0]
	for k := range h {
		names = append(names, k)
	}
	slices.Sort(names)
	dst = append(dst, '{')
	for i, k := range names {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		vs := h[k]
		if len(vs) == 1 {
			dst = appendString(dst, vs[0])
			continue
		}
		dst = appendString(dst, strings.Join(vs, ", "))
	}
	return append(dst, '}')
}

// encodeAnswer is the `"headers":..,"body":..` part of an answer line, as a
// cache entry keeps it.
func encodeAnswer(h http.Header, body []byte) []byte {
	dst := make([]byte, 0, len(body)+64+32*len(h))
	dst = append(dst, `"headers":`...)
	dst = appendHeaders(dst, h)
	dst = append(dst, `,"body":`...)
	return appendBody(dst, body)
}

// appendBody writes an upstream body as JSON when it is valid JSON (compacted,
// so that the answer stays one line) and as a string otherwise.
func appendBody(dst []byte, body []byte) []byte {
	if len(body) > 0 && utf8.Valid(body) && validJSON(body) {
		return appendCompact(dst, body)
	}
	return appendString(dst, string(body))
}

const hexDigits = "0123456789abcdef"

// appendStringBytes is appendString for a byte slice.
func appendStringBytes(dst []byte, b []byte) []byte {
	if bytes.IndexByte(b, '"') < 0 && bytes.IndexByte(b, '\\') < 0 && utf8.Valid(b) && !hasControl(b) {
		dst = append(dst, '"')
		dst = append(dst, b...)
		return append(dst, '"')
	}
	return appendString(dst, string(b))
}

func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// appendString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
