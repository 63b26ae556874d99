package sidecar

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/fender-sidecar/fender/store"
)

// flight is one upstream call shared by identical cacheable requests.
type flight struct {
	done    chan struct{}
	res     Result // set before done is closed
	waiters int    // guarded by its flightShard.mu
	cancel  context.CancelCauseFunc
}

// flights holds the calls in flight by cache key, in shards picked by the
// key's first byte, so that misses on different keys take different locks.
type flights struct {
	shards [16]flightShard
}

type flightShard struct {
	mu sync.Mutex
	m  map[store.Key]*flight
}

func (fs *flights) shard(k store.Key) *flightShard { return &fs.shards[k[0]%16] }

// coalesce answers req from the flight of its key, starting one when there is
// none. The flight runs detached from any one caller: a caller whose deadline
// passes or who leaves stops waiting, and the flight is cancelled only when
// no caller waits for it any more. Its deadline is the later of the first
// caller's and the policy's deadline.
func (s *Service) coalesce(ctx context.Context, key store.Key, up *upstream, lp *livePolicy, req *Request, res *Result) {
	sh := s.flights.shard(key)
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = map[store.Key]*flight{}
	}
	f, joined := sh.m[key]
	if !joined {
		f = &flight{done: make(chan struct{})}
		sh.m[key] = f
		dl, _ := ctx.Deadline()
		if p := time.Now().Add(lp.Deadline); p.After(dl) {
			dl = p
		}
		fctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
		fctx, cancelDl := context.WithDeadline(fctx, dl)
		stop := context.AfterFunc(s.base, func() { cancel(context.Cause(s.base)) })
		f.cancel = cancel
		f.res.hasMeta = true
		f.res.Meta = res.Meta
		freq := *req
		go func() {
			defer cancel(nil)
			defer cancelDl()
			defer stop()
			defer func() {
				if p := recover(); p != nil {
					s.log.Error().Interface("panic", p).Str("upstream", up.name).Msg("shared call panicked")
					f.res.Err = Errorf(CodeInternal, "internal error")
				}
				sh.mu.Lock()
				delete(sh.m, key)
				sh.mu.Unlock()
				close(f.done)
			}()
			s.resolve(fctx, up, lp, &freq, &key, &f.res)
		}()
	}
	f.waiters++
	sh.mu.Unlock()

	select {
	case <-f.done:
		*res = f.res
		res.Meta.Upstream, res.Meta.Model = req.Upstream, req.Model
		if joined {
			res.Meta.Coalesced = true
			res.Meta.Attempts = 0
		}
		return
	case <-ctx.Done():
	}
	sh.mu.Lock()
	f.waiters--
	last := f.waiters == 0
	sh.mu.Unlock()
	if last {
		f.cancel(context.Cause(ctx))
	}
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, ErrShuttingDown):
		res.Err = Errorf(CodeShuttingDown, "drain timeout ended the request")
	case errors.Is(cause, ErrClientGone):
		res.Err = Errorf(CodeUnavailable, "client disconnected")
	default:
		if e, _, ok := s.cache.Get(key); ok {
			res.fromEntry(e)
			res.Meta.Cached, res.Meta.Stale, res.Meta.Fallback = true, true, "stale"
			return
		}
		res.Err = Errorf(CodeTimeout, "deadline passed waiting for the upstream")
	}
	res.Meta.Coalesced = joined
	res.Meta.Breaker = s.breakers.Get(up.name, req.Model, lp.Policy).State().String()
}
