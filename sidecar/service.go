package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/policy"
	"github.com/fender-sidecar/fender/stats"
	"github.com/fender-sidecar/fender/store"
)

// Options configure a Service.
type Options struct {
	Upstreams        []UpstreamConfig
	BasePolicy       policy.Policy // the environment's policy, base of new upstreams
	MaxInflight      int           // requests in flight, all connections together
	MaxResponseBytes int64
	AdminUIDs        []uint32
	LogRequests      bool
	Logger           zerolog.Logger
	Hooks            Hooks        // nil: none
	Cache            *store.Store // nil: no caching
	// Connections reports the open client connections, for the stats op.
	Connections func() int64
}

// Hooks receive the pipeline's events, for telemetry. Implementations must be
// safe for concurrent use and fast: they run on the request path.
type Hooks interface {
	// Attempt reports one upstream attempt; result is ok, status_4xx,
	// status_429, status_5xx, timeout or network.
	Attempt(upstream, model, result string, d time.Duration)
	// Retry reports a retry about to wait out its backoff.
	Retry(upstream string)
	// RetryBudgetExhausted reports a retry refused by the retry budget.
	RetryBudgetExhausted(upstream string)
	// Request reports a finished call; code is "ok" or an error code.
	Request(upstream, code string, d time.Duration)
	// Breaker reports a breaker of (upstream, model) entering state to:
	// closed, open or half_open.
	Breaker(upstream, model, to string)
	// Rejected reports a request refused before it ran: overloaded,
	// bad_request or forbidden.
	Rejected(reason string)
	// Register reports an upstream added at run time (configure).
	Register(upstream string)
	// FirstChunk reports the time to the first chunk of a streamed answer.
	FirstChunk(upstream string, d time.Duration)
	// CacheResult reports how the cache served a call: hit, miss, stale or
	// coalesced.
	CacheResult(upstream, result string)
	// Fallback reports a call answered by a fallback; kind is stale or upstream.
	Fallback(upstream, kind string)
}

type nopHooks struct{}

func (nopHooks) Attempt(string, string, string, time.Duration) {}
func (nopHooks) Retry(string)                                  {}
func (nopHooks) RetryBudgetExhausted(string)                   {}
func (nopHooks) Request(string, string, time.Duration)         {}
func (nopHooks) Breaker(string, string, string)                {}
func (nopHooks) Rejected(string)                               {}
func (nopHooks) Register(string)                               {}
func (nopHooks) FirstChunk(string, time.Duration)              {}
func (nopHooks) CacheResult(string, string)                    {}
func (nopHooks) Fallback(string, string)                       {}

// Peer is the identity of a connected client, from SO_PEERCRED.
type Peer struct {
	UID, GID uint32
	PID      int32
	Known    bool // false when the credentials could not be read
}

// Service answers request lines. It is safe for concurrent use: the socket
// layer calls Handle from one goroutine per request.
type Service struct {
	opts     Options
	log      zerolog.Logger
	hooks    Hooks
	breakers *policy.Breakers

	mu  sync.Mutex                           // serialises configure
	ups atomic.Pointer[map[string]*upstream] // copy on write

	cache   *store.Store
	flights flights
	base    context.Context // cancelled by Abort: ends the shared (coalesced) calls
	abort   context.CancelCauseFunc

	inflight atomic.Int64
	draining atomic.Bool

	rec *stats.Recorder
}

// New builds a Service from opts; every upstream URL and policy is validated.
func New(opts Options) (*Service, error) {
	s := &Service{opts: opts, log: opts.Logger.With().Str("component", "sidecar").Logger(), hooks: opts.Hooks, cache: opts.Cache}
	s.rec = stats.New()
	s.base, s.abort = context.WithCancelCause(context.Background())
	if s.hooks == nil {
		s.hooks = nopHooks{}
	}
	if s.opts.MaxInflight <= 0 {
		s.opts.MaxInflight = 1024
	}
	if s.opts.MaxResponseBytes <= 0 {
		s.opts.MaxResponseBytes = 8 << 20
	}
	s.breakers = policy.NewBreakers(s.onTransition)
	ups := make(map[string]*upstream, len(opts.Upstreams))
	for _, c := range opts.Upstreams {
		up, err := newUpstream(c, s.opts.MaxInflight)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", c.Name, err)
		}
		ups[c.Name] = up
		s.rec.Register(c.Name)
	}
	s.ups.Store(&ups)
	return s, nil
}

func (s *Service) onTransition(t policy.Transition) {
	s.log.Warn().Str("upstream", t.Upstream).Str("model", t.Model).
		Str("from", t.From.String()).Str("to", t.To.String()).Msg("breaker state change")
	if t.To == policy.Open {
		s.rec.BreakerOpened(t.Upstream)
	}
	s.hooks.Breaker(t.Upstream, t.Model, t.To.String())
}

func (s *Service) upstream(name string) *upstream { return (*s.ups.Load())[name] }

// Drain makes the Service answer every call that has not started with
// shutting_down, and health report "draining".
func (s *Service) Drain() { s.draining.Store(true) }

// Draining reports whether Drain was called.
func (s *Service) Draining() bool { return s.draining.Load() }

// Abort ends every call in flight, shared calls included, with cause; each
// is still answered. The socket layer aborts the callers' own contexts.
func (s *Service) Abort(cause error) { s.abort(cause) }

// Inflight returns the calls in flight.
func (s *Service) Inflight() int64 { return s.inflight.Load() }

// Close drops the upstreams' idle connections.
func (s *Service) Close() error {
	for _, up := range *s.ups.Load() {
		up.close()
	}
	return nil
}

// Handle answers one request line, appending the answer line ("\n" included)
// to dst. A streamed call sends its chunk lines through emit first. ctx ends
// when the client disconnects (cause ErrClientGone) or the drain timeout ends
// (cause ErrShuttingDown); Handle always answers.
func (s *Service) Handle(ctx context.Context, peer Peer, line []byte, dst []byte, emit Emit) (out []byte) {
	req, derr := Decode(line)
	if derr != nil {
		s.hooks.Rejected(string(CodeBadRequest))
		return AppendError(dst, req.ID, derr)
	}
	return s.handle(ctx, peer, req, dst, emit)
}

// HandlePrepared is Handle for a request TryHandle decoded (pre, a
// *Request).
func (s *Service) HandlePrepared(ctx context.Context, peer Peer, pre any, dst []byte, emit Emit) []byte {
	return s.handle(ctx, peer, pre.(*Request), dst, emit)
}

func (s *Service) handle(ctx context.Context, peer Peer, req *Request, dst []byte, emit Emit) (out []byte) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error().Interface("panic", p).Str("op", string(req.Op)).Msg("request handler panicked")
			out = AppendError(dst, req.ID, Errorf(CodeInternal, "internal error"))
		}
	}()
	if req.Op.Admin() && !s.isAdmin(peer) {
		s.hooks.Rejected(string(CodeForbidden))
		s.log.Warn().Uint32("peer_uid", peer.UID).Str("op", string(req.Op)).Msg("admin op refused")
		return AppendError(dst, req.ID, Errorf(CodeForbidden, "%s is an admin op; peer uid %d is not an admin", req.Op, peer.UID))
	}
	switch req.Op {
	case OpPing:
		return appendResult(dst, req.ID, &Result{})
	case OpHealth:
		return s.appendJSON(dst, req.ID, "", s.health())
	case OpStats:
		return s.appendJSON(dst, req.ID, "stats", s.stats())
	case OpConfigure:
		p, err := s.configure(req, peer)
		if err != nil {
			s.hooks.Rejected(string(CodeBadRequest))
			return AppendError(dst, req.ID, err)
		}
		return s.appendJSON(dst, req.ID, "policy", p)
	case OpPurge:
		n := 0
		if s.cache != nil {
			n = s.cache.Purge(req.Upstream)
		}
		s.log.Info().Uint32("peer_uid", peer.UID).Str("upstream", req.Upstream).Int("purged", n).Msg("purge")
		return s.appendJSON(dst, req.ID, "purged", n)
	case OpReset:
		n := s.breakers.Reset(req.Upstream, req.Model)
		s.log.Info().Uint32("peer_uid", peer.UID).Str("upstream", req.Upstream).Str("model", req.Model).Int("reset", n).Msg("reset")
		return s.appendJSON(dst, req.ID, "reset", n)
	}
	if req.Stream && emit == nil {
		return AppendError(dst, req.ID, Errorf(CodeInternal, "streaming needs a connection to stream on"))
	}
	if s.draining.Load() {
		return s.refuse(dst, req, Errorf(CodeShuttingDown, "fender is draining"))
	}
	if s.inflight.Add(1) > int64(s.opts.MaxInflight) {
		s.inflight.Add(-1)
		s.hooks.Rejected(string(CodeOverloaded))
		return s.refuse(dst, req, Errorf(CodeOverloaded, "%d requests already in flight", s.opts.MaxInflight))
	}
	defer s.inflight.Add(-1)
	res := s.call(ctx, req, emit)
	s.finish(req, res)
	return appendResult(dst, req.ID, res)
}

// refuse answers a call that was not started, counting it like any call.
func (s *Service) refuse(dst []byte, req *Request, e *Error) []byte {
	res := &Result{Err: e}
	s.finish(req, res)
	return AppendError(dst, req.ID, e)
}

// finish counts and logs a call's result.
func (s *Service) finish(req *Request, res *Result) {
	code := "ok"
	if res.Err != nil {
		code = string(res.Err.Code)
	}
	d := time.Duration(res.Meta.LatencyMs * float64(time.Millisecond))
	s.rec.Request(req.Upstream, code, d)
	s.hooks.Request(req.Upstream, code, d)
	if s.opts.LogRequests {
		s.log.Info().RawJSON("id", req.ID).Str("upstream", req.Upstream).Str("model", req.Model).
			Str("code", code).Int("status", res.Status).Int("attempts", res.Meta.Attempts).
			Bool("cached", res.Meta.Cached).Float64("latency_ms", res.Meta.LatencyMs).Msg("request")
	}
}

func (s *Service) isAdmin(p Peer) bool {
	return p.Known && slices.Contains(s.opts.AdminUIDs, p.UID)
}

// appendJSON appends {"id":..,"ok":true,KEY:v} (v's fields merged when key is "").
func (s *Service) appendJSON(dst []byte, id []byte, key string, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error().Err(err).Msg("encode answer")
		return AppendError(dst, id, Errorf(CodeInternal, "internal error"))
	}
	dst = append(dst, `{"id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"ok":true`...)
	if key == "" {
		if len(b) > 2 {
			dst = append(dst, ',')
			dst = append(dst, b[1:len(b)-1]...)
		}
	} else {
		dst = append(dst, ',')
		dst = appendString(dst, key)
		dst = append(dst, ':')
		dst = append(dst, b...)
	}
	return append(dst, "}\n"...)
}

type healthUpstream struct {
	URL      string            `json:"url"`
	Breakers map[string]string `json:"breakers"`
}

func (s *Service) health() any {
	status := "serving"
	if s.draining.Load() {
		status = "draining"
	}
	ups := map[string]healthUpstream{}
	for name, up := range *s.ups.Load() {
		ups[name] = healthUpstream{URL: up.redacted, Breakers: s.breakers.States(name)}
	}
	return struct {
		Status    string                    `json:"status"`
		Upstreams map[string]healthUpstream `json:"upstreams"`
	}{status, ups}
}

func (s *Service) stats() any {
	type overall struct {
		stats.Snapshot
		Inflight     int64                     `json:"inflight"`
		Connections  int64                     `json:"connections"`
		CacheEntries int                       `json:"cache_entries"`
		CacheBytes   int64                     `json:"cache_bytes"`
		Upstreams    map[string]stats.Snapshot `json:"upstreams"`
	}
	o := overall{Snapshot: s.rec.Overall(), Inflight: s.inflight.Load(), Upstreams: s.rec.Upstreams()}
	if s.opts.Connections != nil {
		o.Connections = s.opts.Connections()
	}
	if s.cache != nil {
		o.CacheEntries, o.CacheBytes = s.cache.Len(), s.cache.Bytes()
	}
	return o
}

// configure adds or changes an upstream (admin op). The policy's keys
// override the upstream's current policy (the environment's for a new one);
// the result is validated whole and changes nothing when invalid.
func (s *Service) configure(req *Request, peer Peer) (policy.Policy, *Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.ups.Load()
	up := cur[req.Upstream]
	base := s.opts.BasePolicy
	if up != nil {
		base = up.pol.Load().Policy
	} else {
		if !ValidName(req.Upstream) {
			return base, Errorf(CodeBadRequest, "upstream name %q: use letters, digits, '-', '_' and '.'", req.Upstream)
		}
		if req.URL == "" {
			return base, Errorf(CodeBadRequest, "url is required for a new upstream %q", req.Upstream)
		}
	}
	p := base
	if req.Policy != nil {
		ov, err := policy.ParseOverrides(req.Policy)
		if err != nil {
			return base, Errorf(CodeBadRequest, "policy: %v", err)
		}
		if p, err = ov.Apply(base); err != nil {
			return base, Errorf(CodeBadRequest, "policy: %v", err)
		}
	}
	for _, f := range p.Fallback {
		name := f
		if i := strings.IndexByte(f, ':'); i >= 0 {
			name = f[:i]
		}
		if cur[name] == nil && name != req.Upstream {
			return base, Errorf(CodeBadRequest, "policy: fallback: unknown upstream %q", name)
		}
	}
	if req.URL != "" && (up == nil || up.base != strings.TrimRight(req.URL, "/")) {
		nu, err := newUpstream(UpstreamConfig{Name: req.Upstream, URL: req.URL, Policy: p}, s.opts.MaxInflight)
		if err != nil {
			return base, Errorf(CodeBadRequest, "url: %v", err)
		}
		next := make(map[string]*upstream, len(cur)+1)
		for k, v := range cur {
			next[k] = v
		}
		next[req.Upstream] = nu
		s.ups.Store(&next)
		s.rec.Register(req.Upstream)
		s.hooks.Register(req.Upstream)
		if up != nil {
			up.close()
		}
	} else {
		up.pol.Store(newLivePolicy(p))
	}
	keys := make([]string, 0)
	if req.Policy != nil {
		var m map[string]json.RawMessage
		_ = json.Unmarshal(req.Policy, &m)
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
	}
	s.log.Info().Uint32("peer_uid", peer.UID).Str("upstream", req.Upstream).Bool("new", up == nil).
		Strs("keys", keys).Msg("configure")
	return p, nil
}

// cacheResult reports how the cache served a call of upstream.
func (s *Service) cacheResult(upstream, result string) {
	s.rec.CacheResult(upstream, result)
	s.hooks.CacheResult(upstream, result)
}

// fallback reports a call of upstream answered by a fallback.
func (s *Service) fallback(upstream, kind string) {
	s.rec.Fallback(upstream, kind)
	s.hooks.Fallback(upstream, kind)
}
