package sidecar

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/fender-sidecar/fender/policy"
	"github.com/fender-sidecar/fender/store"
)

// call runs a call request through the pipeline: cache, coalescing, then the
// primary upstream through its breaker and retrier, then stale-if-error and
// the fallback upstreams; a 2xx answer of the primary is stored.
func (s *Service) call(ctx context.Context, req *Request, emit Emit) *Result {
	start := time.Now()
	res := &Result{hasMeta: true}
	res.Meta.Upstream, res.Meta.Model = req.Upstream, req.Model
	up := s.upstream(req.Upstream)
	if up == nil {
		res.Err = Errorf(CodeUnknownUpstream, "no upstream named %q", req.Upstream)
		res.Meta.Breaker = policy.Closed.String()
		return res
	}
	lp := up.pol.Load()
	deadline := lp.Deadline
	if req.TimeoutMs > 0 {
		deadline = time.Duration(req.TimeoutMs) * time.Millisecond
	}
	ctx, cancel := context.WithDeadline(ctx, start.Add(deadline))
	defer cancel()

	if s.cache == nil || req.Cache == CacheBypass || req.Stream {
		s.resolve(ctx, up, lp, req, nil, res) // streamed answers are not cached
		if res.stream != nil {
			s.pump(ctx, req.ID, up.name, lp, res, emit, start)
		}
	} else {
		key := req.key
		if req.keyPolicy != lp { // not computed by TryHandle, or the policy changed since
			key = cacheKey(up.name, req, lp.CacheVaryHeaders)
		}
		if req.Cache == CacheUse && s.hit(key, up, lp, req, res, start) {
			return res
		}
		s.coalesce(ctx, key, up, lp, req, res)
	}
	s.report(up.name, res, s.cache != nil && req.Cache != CacheBypass && !req.Stream)
	if res.Err != nil && res.Err.Code != CodeShuttingDown && ctx.Err() != nil {
		// A shutdown while the request waited ends it too.
		if errors.Is(context.Cause(ctx), ErrShuttingDown) {
			res.Err = Errorf(CodeShuttingDown, "drain timeout ended the request")
		}
	}
	res.Meta.LatencyMs = sinceMs(start)
	return res
}

// hit answers req from a fresh cache entry, if there is one.
func (s *Service) hit(key store.Key, up *upstream, lp *livePolicy, req *Request, res *Result, start time.Time) bool {
	e, fresh, ok := s.cache.Get(key)
	if !ok || !fresh {
		return false
	}
	res.fromEntry(e)
	res.Meta.Cached = true
	res.Meta.Breaker = s.breakers.Get(up.name, req.Model, lp.Policy).State().String()
	s.report(up.name, res, true)
	res.Meta.LatencyMs = sinceMs(start)
	return true
}

// TryHandle answers line at once when that needs no waiting: a line that
// does not decode, a ping, or a call answered by a fresh cache entry. The
// socket layer calls it in the connection's reader, sparing a handoff to a
// worker and its wake-up. When ok is false, pre is the decoded request
// (with its cache key, when one was computed) for HandlePrepared.
func (s *Service) TryHandle(peer Peer, line []byte, dst []byte) (out []byte, ok bool, pre any) {
	start := time.Now()
	// Decoded on the stack: only a request that needs a worker is moved
	// to the heap (a cache hit allocates no Request).
	var rv Request
	req := &rv
	if derr := req.decode(line); derr != nil {
		s.hooks.Rejected(string(CodeBadRequest))
		return AppendError(dst, req.ID, derr), true, nil
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error().Interface("panic", p).Str("op", string(req.Op)).Msg("request handler panicked")
			out, ok, pre = AppendError(dst, req.ID, Errorf(CodeInternal, "internal error")), true, nil
		}
	}()
	switch {
	case req.Op == OpPing:
		return appendResult(dst, req.ID, &Result{}), true, nil
	case req.Op != OpCall, req.Stream, req.Cache != CacheUse, s.cache == nil, s.draining.Load():
		return nil, false, req.clone()
	}
	up := s.upstream(req.Upstream)
	if up == nil {
		return nil, false, req.clone()
	}
	lp := up.pol.Load()
	res := &Result{hasMeta: true}
	res.Meta.Upstream, res.Meta.Model = req.Upstream, req.Model
	req.key, req.keyPolicy = cacheKey(up.name, req, lp.CacheVaryHeaders), lp
	if !s.hit(req.key, up, lp, req, res, start) {
		return nil, false, req.clone()
	}
	s.finish(req, res)
	return appendResult(dst, req.ID, res), true, nil
}

// clone moves a request decoded on the stack to the heap.
func (r *Request) clone() *Request {
	c := *r
	return &c
}

// report counts, once per answer, how the cache served it (when the cache was
// used: hit, stale, coalesced or miss) and whether a fallback answered.
func (s *Service) report(upstream string, res *Result, cached bool) {
	if cached {
		switch {
		case res.Meta.Stale:
			s.cacheResult(upstream, "stale")
		case res.Meta.Cached:
			s.cacheResult(upstream, "hit")
		case res.Meta.Coalesced:
			s.cacheResult(upstream, "coalesced")
		default:
			s.cacheResult(upstream, "miss")
		}
	}
	switch res.Meta.Fallback {
	case "":
	case "stale":
		s.fallback(upstream, "stale")
	default:
		s.fallback(upstream, "upstream")
	}
}

func sinceMs(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func (r *Result) fromEntry(e *store.Entry) {
	r.Status, r.Header, r.Body, r.encoded = e.Status, e.Header, e.Body, e.Encoded
}

// resolve answers req from its upstreams: the primary through its breaker and
// retrier, then, on a transient failure, a stale cache entry (when key is
// set), then each fallback upstream in order, all within ctx's deadline. A
// 2xx answer of the primary is stored under key.
func (s *Service) resolve(ctx context.Context, up *upstream, lp *livePolicy, req *Request, key *store.Key, res *Result) {
	retries := lp.Retries
	if req.Retries >= 0 {
		retries = req.Retries
	}
	br := s.breakers.Get(up.name, req.Model, lp.Policy)
	up.budget.Start()
	last, attempts := s.retry(ctx, up, lp, br, req, retries)
	up.budget.Done()
	res.Meta.Attempts = attempts
	res.Meta.Breaker = br.State().String()
	res.setOutcome(&last)
	if last.err == nil {
		if key != nil && last.status >= 200 && last.status < 300 {
			s.store(*key, up.name, lp, req, &last)
		}
		return
	}
	if !fallsBack(last.err) || s.ending(ctx) {
		return
	}
	if key != nil {
		if e, _, ok := s.cache.Get(*key); ok {
			res.fromEntry(e)
			res.Err = nil
			res.Meta.Cached, res.Meta.Stale, res.Meta.Fallback = true, true, "stale"
			return
		}
	}
	for _, f := range lp.Fallback {
		if ctx.Err() != nil {
			return
		}
		name, model, withModel := strings.Cut(f, ":")
		fu := s.upstream(name)
		if fu == nil {
			continue
		}
		freq := *req
		if withModel {
			freq.Model = model
			freq.Body = replaceModel(req.Body, model)
		}
		flp := fu.pol.Load()
		fbr := s.breakers.Get(fu.name, freq.Model, flp.Policy)
		fu.budget.Start()
		flast, n := s.retry(ctx, fu, flp, fbr, &freq, flp.Retries)
		fu.budget.Done()
		res.Meta.Attempts += n
		if flast.err == nil {
			res.setOutcome(&flast)
			res.Meta.Fallback = f
			return
		}
	}
}

// setOutcome makes o the answer of r.
func (r *Result) setOutcome(o *outcome) {
	r.Status, r.Header, r.Body, r.encoded = 0, nil, nil, nil
	if o.status > 0 {
		r.Status, r.Header, r.Body = o.status, o.header, o.body
	}
	r.stream = o.stream
	r.Err = o.err
}

// fallsBack reports whether a failure is transient in the SPEC's sense for
// stale-if-error and fallbacks: timeout, unavailable, circuit_open, or a
// retryable upstream status (408, 429, 5xx) after retries.
func fallsBack(e *Error) bool {
	switch e.Code {
	case CodeTimeout, CodeUnavailable, CodeCircuitOpen:
		return true
	case CodeUpstreamStatus:
		return e.Retryable
	}
	return false
}

// ending reports whether the request is over for reasons of its own: its
// client left or fender is shutting down.
func (s *Service) ending(ctx context.Context) bool {
	cause := context.Cause(ctx)
	return errors.Is(cause, ErrShuttingDown) || errors.Is(cause, ErrClientGone)
}

// store caches a 2xx answer for the request's TTL (cache_ttl_ms, else the
// policy's cache_ttl) plus the policy's stale window.
func (s *Service) store(key store.Key, upstream string, lp *livePolicy, req *Request, o *outcome) {
	ttl := lp.CacheTTL
	if req.CacheTTL >= 0 {
		ttl = time.Duration(req.CacheTTL) * time.Millisecond
	}
	if ttl <= 0 {
		return
	}
	now := time.Now()
	s.cache.Set(key, &store.Entry{
		Upstream: upstream, Status: o.status, BodyLen: len(o.body), Encoded: encodeAnswer(o.header, o.body),
		Fresh: now.Add(ttl), Stale: now.Add(ttl + lp.CacheStale),
	})
}

// replaceModel returns body with its top-level "model" set to model; a body
// that is not a JSON object is returned as it is.
func replaceModel(body []byte, model string) []byte {
	if len(body) == 0 || body[0] != '{' {
		return body
	}
	var buf [16]member
	ms, _ := members(body, buf[:0], false)
	out := make([]byte, 0, len(body)+len(model)+16)
	out = append(out, `{"model":`...)
	out = appendString(out, model)
	for _, m := range ms {
		if string(m.key) == "model" {
			continue
		}
		out = append(out, ',')
		out = appendString(out, string(m.key))
		out = append(out, ':')
		out = append(out, m.raw...)
	}
	return append(out, '}')
}
