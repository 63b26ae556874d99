// Package stats keeps fender's request statistics: counters overall and per
// upstream, and latency percentiles over a sliding window of recent samples,
// for the stats op. It is a leaf: the pipeline reports to it through plain
// method calls, and it knows nothing of fender's other packages.
package stats

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// window is the number of recent latency samples kept per upstream.
const window = 2048

// counters is one set of statistics (overall, or one upstream's).
type counters struct {
	requests, success, errors       atomic.Int64
	cacheHits, cacheMisses, retries atomic.Int64
	breakerOpens, fallbacks         atomic.Int64
	coalesced, streams              atomic.Int64

	latency, firstChunk ring
}

// ring is a sliding window of the last samples, in ms, written without a
// lock: each observation claims a slot with one atomic add. A reader may see
// a slot's sample from one lap earlier (0 on the first lap) while a writer is
// at it, which moves a percentile by one sample at most.
type ring struct {
	samples [window]atomic.Uint64 // math.Float64bits of the sample
	n       atomic.Int64          // samples recorded, ever
}

func (r *ring) observe(ms float64) {
	i := r.n.Add(1) - 1
	r.samples[i%window].Store(math.Float64bits(ms))
}

func (r *ring) percentiles() Latency {
	n := min(r.n.Load(), window)
	lat := make([]float64, n)
	for i := range lat {
		lat[i] = math.Float64frombits(r.samples[i].Load())
	}
	return percentiles(lat)
}

// Recorder collects statistics. Safe for concurrent use; its methods are
// cheap enough for the request path: atomics only, no lock.
type Recorder struct {
	all counters
	ups sync.Map // name -> *counters, only registered upstreams
}

// New returns an empty Recorder.
func New() *Recorder { return &Recorder{} }

// Register makes upstream known: only registered upstreams get statistics of
// their own, so that clients naming unknown upstreams cannot grow memory.
func (r *Recorder) Register(upstream string) { r.ups.LoadOrStore(upstream, &counters{}) }

func (r *Recorder) get(upstream string) *counters {
	if v, ok := r.ups.Load(upstream); ok {
		return v.(*counters)
	}
	return nil
}

// each applies f to the overall counters and to upstream's, if registered.
func (r *Recorder) each(upstream string, f func(*counters)) {
	f(&r.all)
	if c := r.get(upstream); c != nil {
		f(c)
	}
}

// Request records a finished call; code is "ok" or an error code.
func (r *Recorder) Request(upstream, code string, d time.Duration) {
	ms := float64(d.Microseconds()) / 1000
	r.each(upstream, func(c *counters) {
		c.requests.Add(1)
		if code == "ok" {
			c.success.Add(1)
		} else {
			c.errors.Add(1)
		}
		c.latency.observe(ms)
	})
}

// FirstChunk records the time to the first chunk of a streamed answer.
func (r *Recorder) FirstChunk(upstream string, d time.Duration) {
	ms := float64(d.Microseconds()) / 1000
	r.each(upstream, func(c *counters) {
		c.streams.Add(1)
		c.firstChunk.observe(ms)
	})
}

// Retry records a retry.
func (r *Recorder) Retry(upstream string) {
	r.each(upstream, func(c *counters) { c.retries.Add(1) })
}

// BreakerOpened records a breaker that opened.
func (r *Recorder) BreakerOpened(upstream string) {
	r.each(upstream, func(c *counters) { c.breakerOpens.Add(1) })
}

// CacheResult records how the cache served a call: hit, miss, stale or
// coalesced. Stale and coalesced answers count as neither hit nor miss.
func (r *Recorder) CacheResult(upstream, result string) {
	r.each(upstream, func(c *counters) {
		switch result {
		case "hit":
			c.cacheHits.Add(1)
		case "miss":
			c.cacheMisses.Add(1)
		case "coalesced":
			c.coalesced.Add(1)
		}
	})
}

// Fallback records a call answered by a fallback (stale or upstream).
func (r *Recorder) Fallback(upstream, kind string) {
	r.each(upstream, func(c *counters) { c.fallbacks.Add(1) })
}

// Latency is the latency_ms object of a snapshot.
type Latency struct {
	Avg float64 `json:"avg"`
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// Snapshot is the stats of one upstream or of all, as the stats op shows it.
type Snapshot struct {
	Requests     int64   `json:"requests"`
	Success      int64   `json:"success"`
	Errors       int64   `json:"errors"`
	SuccessRate  float64 `json:"success_rate"`
	CacheHits    int64   `json:"cache_hits"`
	CacheMisses  int64   `json:"cache_misses"`
	CacheHitRate float64 `json:"cache_hit_rate"`
	Retries      int64   `json:"retries"`
	BreakerOpens int64   `json:"breaker_opens"`
	Fallbacks    int64   `json:"fallbacks"`
	Coalesced    int64   `json:"coalesced"`
	LatencyMs    Latency `json:"latency_ms"`
	Streams      int64   `json:"streams"`        // streamed answers that sent a chunk
	FirstChunkMs Latency `json:"first_chunk_ms"` // time to their first chunk
}

func (c *counters) snapshot() Snapshot {
	s := Snapshot{
		Requests: c.requests.Load(), Success: c.success.Load(), Errors: c.errors.Load(),
		CacheHits: c.cacheHits.Load(), CacheMisses: c.cacheMisses.Load(), Retries: c.retries.Load(),
		BreakerOpens: c.breakerOpens.Load(), Fallbacks: c.fallbacks.Load(), Coalesced: c.coalesced.Load(),
		Streams: c.streams.Load(),
	}
	if s.Requests > 0 {
		s.SuccessRate = float64(s.Success) / float64(s.Requests)
	}
	if n := s.CacheHits + s.CacheMisses; n > 0 {
		s.CacheHitRate = float64(s.CacheHits) / float64(n)
	}
	s.LatencyMs = c.latency.percentiles()
	s.FirstChunkMs = c.firstChunk.percentiles()
	return s
}

// percentiles computes the average and nearest-rank percentiles of samples.
func percentiles(samples []float64) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	sort.Float64s(samples)
	sum := 0.0
	for _, v := range samples {
		sum += v
	}
	rank := func(p float64) float64 {
		i := int(p*float64(len(samples))+0.999999) - 1
		return samples[max(0, min(i, len(samples)-1))]
	}
	return Latency{Avg: sum / float64(len(samples)), P50: rank(0.50), P95: rank(0.95), P99: rank(0.99)}
}

// Overall returns the overall snapshot.
func (r *Recorder) Overall() Snapshot { return r.all.snapshot() }

// Upstreams returns the snapshot of each registered upstream.
func (r *Recorder) Upstreams() map[string]Snapshot {
	out := map[string]Snapshot{}
	r.ups.Range(func(k, v any) bool {
		out[k.(string)] = v.(*counters).snapshot()
		return true
	})
	return out
}
