package sidecar

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fender-sidecar/fender/h1"
	"github.com/fender-sidecar/fender/store"
)

// Op is a request's operation.
type Op string

// The operations.
const (
	OpCall      Op = "call"
	OpPing      Op = "ping"
	OpHealth    Op = "health"
	OpStats     Op = "stats"
	OpConfigure Op = "configure"
	OpPurge     Op = "purge"
	OpReset     Op = "reset"
)

// Admin reports whether op is an admin op, allowed only to admin peers.
func (o Op) Admin() bool { return o == OpConfigure || o == OpPurge || o == OpReset }

// Cache modes of a call.
const (
	CacheUse     = "use"
	CacheBypass  = "bypass"
	CacheRefresh = "refresh"
)

// Request is one decoded request line. Absent optional fields hold their
// "absent" value noted on each; the pipeline applies the policy's defaults.
type Request struct {
	ID        []byte // raw JSON: a string or a number, echoed unchanged
	Op        Op
	Upstream  string
	Method    string
	Path      string
	Headers   [][2]string
	Body      []byte // raw JSON body, compacted; nil when absent
	BodyText  *string
	Model     string
	TimeoutMs int64 // 0 = absent
	Retries   int   // -1 = absent
	Cache     string
	CacheTTL  int64 // -1 = absent, else milliseconds
	Stream    bool

	// Admin fields.
	URL    string
	Policy json.RawMessage

	// The cache key, when TryHandle computed it under keyPolicy.
	key       store.Key
	keyPolicy *livePolicy
}

// wire is the request line's members, each kept raw so that its type can be
// checked strictly: defaults apply to absent fields only.
type wire struct {
	ID, Op, Upstream, Method, Path, Headers, Body, BodyText, Model,
	TimeoutMs, Retries, Cache, CacheTTLMs, Stream, URL, Policy json.RawMessage
}

func (w *wire) set(m member) {
	switch string(m.key) {
	case "id":
		w.ID = m.raw
	case "op":
		w.Op = m.raw
	case "upstream":
		w.Upstream = m.raw
	case "method":
		w.Method = m.raw
	case "path":
		w.Path = m.raw
	case "headers":
		w.Headers = m.raw
	case "body":
		w.Body = m.raw
	case "body_text":
		w.BodyText = m.raw
	case "model":
		w.Model = m.raw
	case "timeout_ms":
		w.TimeoutMs = m.raw
	case "retries":
		w.Retries = m.raw
	case "cache":
		w.Cache = m.raw
	case "cache_ttl_ms":
		w.CacheTTLMs = m.raw
	case "stream":
		w.Stream = m.raw
	case "url":
		w.URL = m.raw
	case "policy":
		w.Policy = m.raw
	}
}

// Decode parses one request line (without its line ending). The request
// keeps slices of line, which the caller must not change afterwards. On
// failure it returns the id when it could be read (else nil, answered as
// null) and a bad_request error naming the field.
func Decode(line []byte) (*Request, *Error) {
	r := new(Request)
	return r, r.decode(line)
}

// decode is Decode into r, which it overwrites whole.
func (r *Request) decode(line []byte) *Error {
	*r = Request{Retries: -1, CacheTTL: -1}
	if t := skipSpace(line, 0); t >= len(line) || line[t] != '{' {
		return Errorf(CodeBadRequest, "request must be a JSON object")
	}
	if !validJSON(line) {
		err := json.Unmarshal(line, new(json.RawMessage))
		return Errorf(CodeBadRequest, "invalid JSON: %v", err)
	}
	var buf [16]member
	ms, dup := members(line, buf[:0], true)
	var w wire
	for _, m := range ms {
		w.set(m)
	}
	switch {
	case len(w.ID) == 0:
		return Errorf(CodeBadRequest, "id is required")
	case w.ID[0] == '"' || w.ID[0] == '-' || (w.ID[0] >= '0' && w.ID[0] <= '9'):
		r.ID = w.ID
	default:
		return Errorf(CodeBadRequest, "id must be a string or a number")
	}
	if !utf8.Valid(line) {
		if !utf8.Valid(r.ID) {
			r.ID = nil // echoing it would make the answer invalid too
		}
		return Errorf(CodeBadRequest, "request line is not valid UTF-8")
	}
	if dup != nil {
		return Errorf(CodeBadRequest, "duplicate key %q", dup)
	}
	var err *Error
	op := "call"
	if err = str(w.Op, "op", &op); err != nil {
		return err
	}
	switch r.Op = Op(op); r.Op {
	case OpCall, OpPing, OpHealth, OpStats, OpConfigure, OpPurge, OpReset:
	default:
		return Errorf(CodeBadRequest, "unknown op %q", op)
	}
	if err = str(w.Upstream, "upstream", &r.Upstream); err != nil {
		return err
	}
	if w.Upstream != nil && r.Upstream == "" {
		return Errorf(CodeBadRequest, "upstream must not be empty")
	}
	if err = str(w.Model, "model", &r.Model); err != nil {
		return err
	}
	switch r.Op {
	case OpCall:
		return r.decodeCall(&w)
	case OpConfigure:
		if err = str(w.URL, "url", &r.URL); err != nil {
			return err
		}
		if w.Policy != nil {
			if w.Policy[0] != '{' {
				return Errorf(CodeBadRequest, "policy must be a JSON object")
			}
			r.Policy = w.Policy
		}
		if r.Upstream == "" {
			return Errorf(CodeBadRequest, "configure needs an upstream")
		}
	}
	return nil
}

func (r *Request) decodeCall(w *wire) *Error {
	if w.Upstream == nil {
		return Errorf(CodeBadRequest, "call needs an upstream")
	}
	r.Method = "POST"
	if err := str(w.Method, "method", &r.Method); err != nil {
		return err
	}
	if !h1.IsToken(r.Method) {
		return Errorf(CodeBadRequest, "method %q is not a valid HTTP method", r.Method)
	}
	r.Path = "/"
	if err := str(w.Path, "path", &r.Path); err != nil {
		return err
	}
	if err := checkPath(r.Path); err != nil {
		return err
	}
	if w.Headers != nil {
		if w.Headers[0] != '{' {
			return Errorf(CodeBadRequest, "headers must be an object of strings")
		}
		var hbuf [16]member
		hs, dup := members(w.Headers, hbuf[:0], true)
		if dup != nil {
			return Errorf(CodeBadRequest, "headers: duplicate key %q", dup)
		}
		r.Headers = make([][2]string, 0, len(hs))
		for _, m := range hs {
			if m.raw[0] != '"' {
				return Errorf(CodeBadRequest, "headers: %q must be a string", m.key)
			}
			s, err := unquote(m.raw)
			if err != nil {
				return Errorf(CodeBadRequest, "headers: %q must be a string", m.key)
			}
			if !h1.IsToken(string(m.key)) {
				return Errorf(CodeBadRequest, "headers: %q is not a valid header name", m.key)
			}
			if !h1.ValidHeaderValue(s) {
				return Errorf(CodeBadRequest, "headers: %q has a value with a control character", m.key)
			}
			r.Headers = append(r.Headers, [2]string{string(m.key), s})
		}
	}
	if w.Body != nil {
		body, err := compactJSON(w.Body)
		if err != nil {
			return Errorf(CodeBadRequest, "body: %s", err.Error())
		}
		r.Body = body
		if w.Model == nil && body[0] == '{' {
			r.Model, _ = stringMember(body, "model")
		}
	}
	if w.BodyText != nil {
		if w.Body != nil {
			return Errorf(CodeBadRequest, "body and body_text are exclusive")
		}
		var s string
		if err := str(w.BodyText, "body_text", &s); err != nil {
			return err
		}
		r.BodyText = &s
	}
	var err *Error
	if r.TimeoutMs, err = integer(w.TimeoutMs, "timeout_ms", 1, maxMillis, 0); err != nil {
		return err
	}
	var retries int64
	if retries, err = integer(w.Retries, "retries", 0, math.MaxInt32, -1); err != nil {
		return err
	}
	r.Retries = int(retries)
	r.Cache = CacheUse
	if err = str(w.Cache, "cache", &r.Cache); err != nil {
		return err
	}
	if r.Cache != CacheUse && r.Cache != CacheBypass && r.Cache != CacheRefresh {
		return Errorf(CodeBadRequest, "cache must be use, bypass or refresh, got %q", r.Cache)
	}
	if r.CacheTTL, err = integer(w.CacheTTLMs, "cache_ttl_ms", 0, maxMillis, -1); err != nil {
		return err
	}
	if w.Stream != nil {
		switch string(w.Stream) {
		case "true":
			r.Stream = true
		case "false":
		default:
			return Errorf(CodeBadRequest, "stream must be a boolean")
		}
	}
	return nil
}

// str decodes raw into *dst when present; it must be a JSON string.
func str(raw json.RawMessage, field string, dst *string) *Error {
	if raw == nil {
		return nil
	}
	s, err := unquote(raw)
	if err != nil {
		return Errorf(CodeBadRequest, "%s must be a string", field)
	}
	*dst = s
	return nil
}

// integer decodes raw as an integer in [lo, hi], or returns absent when raw is
// missing. Integral numbers in exponent form (1e3) are accepted.
func integer(raw json.RawMessage, field string, lo, hi, absent int64) (int64, *Error) {
	if raw == nil {
		return absent, nil
	}
	s := string(raw)
	if s[0] != '-' && (s[0] < '0' || s[0] > '9') {
		return 0, Errorf(CodeBadRequest, "%s must be an integer", field)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		switch {
		case ferr == nil && f != math.Trunc(f):
			return 0, Errorf(CodeBadRequest, "%s must be an integer", field)
		case ferr != nil || f < float64(lo) || f > float64(hi):
			return 0, Errorf(CodeBadRequest, "%s is out of range [%d, %d]", field, lo, hi)
		}
		n = int64(f)
	}
	if n < lo || n > hi {
		return 0, Errorf(CodeBadRequest, "%s is out of range [%d, %d]", field, lo, hi)
	}
	return n, nil
}

// checkPath accepts a path and query that cannot name another host: it starts
// with "/", not "//", and holds no scheme, space or control character.
func checkPath(p string) *Error {
	switch {
	case p == "":
		return Errorf(CodeBadRequest, "path must not be empty")
	case p[0] != '/':
		return Errorf(CodeBadRequest, "path must start with /")
	case strings.HasPrefix(p, "//"):
		return Errorf(CodeBadRequest, "path must not start with //")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			return Errorf(CodeBadRequest, "path has a space or control character")
		}
	}
	return nil
}

// maxMillis is the largest millisecond count that fits a time.Duration.
const maxMillis = math.MaxInt64 / int64(1e6)
