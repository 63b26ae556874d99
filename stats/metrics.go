package stats

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// MaxModelLabels bounds the distinct model label values per upstream; past it
// models are labelled OtherModel, so that clients naming random models cannot
// grow memory or the scrape without bound.
const MaxModelLabels = 100

// OtherModel is the model label shared by models past MaxModelLabels.
const OtherModel = "other"

// UnknownUpstream labels calls naming no configured upstream: a client's
// made-up names never become label values.
const UnknownUpstream = "_unknown"

// The label values of the SPEC's series.
var (
	codes          = []string{"ok", "bad_request", "too_large", "unknown_upstream", "forbidden", "overloaded", "circuit_open", "timeout", "unavailable", "upstream_status", "shutting_down", "internal"}
	attemptResults = []string{"ok", "status_4xx", "status_429", "status_5xx", "timeout", "network"}
	cacheResults   = []string{"hit", "miss", "stale", "coalesced"}
	rejectReasons  = []string{"overloaded", "too_large", "bad_request", "forbidden", "peer"}
	breakerStates  = []string{"closed", "open", "half_open"}
)

// Metrics is fender's telemetry in VictoriaMetrics/metrics form (SPEC
// section 9). Every series is made once and then found without formatting a
// name, so recording costs a map lookup and an atomic add. Safe for
// concurrent use.
type Metrics struct {
	set *metrics.Set
	ups atomic.Pointer[map[string]*upMetrics]
	mu  sync.Mutex // serialises Register

	cache                       map[string]*metrics.Counter
	rejected                    map[string]*metrics.Counter
	evictions, connectionsTotal *metrics.Counter
}

// upMetrics are one upstream's series.
type upMetrics struct {
	name                      string
	requests                  map[string]*metrics.Counter // by code
	retries, budgetExhausted  *metrics.Counter
	fallbackStale, fallbackUp *metrics.Counter
	reqDur, upDur, firstChunk *metrics.Histogram
	mu                        sync.RWMutex
	models                    map[string]*modelMetrics
}

// modelMetrics are the series of one (upstream, model).
type modelMetrics struct {
	attempts    map[string]*metrics.Counter // by result
	state       *metrics.Gauge
	transitions map[string]*metrics.Counter // by state entered
}

// NewMetrics makes the metrics of the given upstreams. gauges supplies the
// values read at scrape time; any may be nil.
func NewMetrics(upstreams []string, gauges Gauges) *Metrics {
	m := &Metrics{set: metrics.NewSet(), cache: map[string]*metrics.Counter{}, rejected: map[string]*metrics.Counter{}}
	empty := map[string]*upMetrics{}
	m.ups.Store(&empty)
	for _, r := range cacheResults {
		m.cache[r] = m.set.NewCounter(`fender_cache_requests_total{result="` + r + `"}`)
	}
	for _, r := range rejectReasons {
		m.rejected[r] = m.set.NewCounter(`fender_rejected_total{reason="` + r + `"}`)
	}
	m.evictions = m.set.NewCounter("fender_cache_evictions_total")
	m.connectionsTotal = m.set.NewCounter("fender_connections_total")
	gauge := func(name string, f func() float64) {
		if f == nil {
			f = func() float64 { return 0 }
		}
		m.set.NewGauge(name, f)
	}
	gauge("fender_cache_entries", gauges.CacheEntries)
	gauge("fender_cache_bytes", gauges.CacheBytes)
	gauge("fender_inflight_requests", gauges.Inflight)
	gauge("fender_connections_active", gauges.Connections)
	for _, u := range upstreams {
		m.Register(u)
	}
	m.Register(UnknownUpstream)
	return m
}

// Gauges are the values fender_cache_entries, fender_cache_bytes,
// fender_inflight_requests and fender_connections_active read at scrape time.
type Gauges struct {
	CacheEntries, CacheBytes, Inflight, Connections func() float64
}

// Register makes the series of upstream; calling it again is harmless.
func (m *Metrics) Register(upstream string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.ups.Load()
	if cur[upstream] != nil {
		return
	}
	q := strconv.Quote(upstream)
	u := &upMetrics{name: upstream, requests: map[string]*metrics.Counter{}, models: map[string]*modelMetrics{}}
	for _, c := range codes {
		u.requests[c] = m.set.NewCounter(`fender_requests_total{upstream=` + q + `,code="` + c + `"}`)
	}
	u.retries = m.set.NewCounter(`fender_retries_total{upstream=` + q + `}`)
	u.budgetExhausted = m.set.NewCounter(`fender_retry_budget_exhausted_total{upstream=` + q + `}`)
	u.fallbackStale = m.set.NewCounter(`fender_fallbacks_total{upstream=` + q + `,kind="stale"}`)
	u.fallbackUp = m.set.NewCounter(`fender_fallbacks_total{upstream=` + q + `,kind="upstream"}`)
	u.reqDur = m.set.NewHistogram(`fender_request_duration_seconds{upstream=` + q + `}`)
	u.upDur = m.set.NewHistogram(`fender_upstream_duration_seconds{upstream=` + q + `}`)
	u.firstChunk = m.set.NewHistogram(`fender_stream_first_chunk_seconds{upstream=` + q + `}`)
	next := make(map[string]*upMetrics, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[upstream] = u
	m.ups.Store(&next)
}

func (m *Metrics) up(upstream string) *upMetrics {
	ups := *m.ups.Load()
	if u := ups[upstream]; u != nil {
		return u
	}
	return ups[UnknownUpstream]
}

// model returns the series of (u, model), making them while fewer than
// MaxModelLabels models are labelled.
func (m *Metrics) model(u *upMetrics, model string) *modelMetrics {
	u.mu.RLock()
	mm := u.models[model]
	u.mu.RUnlock()
	if mm != nil {
		return mm
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if mm = u.models[model]; mm != nil {
		return mm
	}
	if len(u.models) >= MaxModelLabels && model != OtherModel {
		if mm = u.models[OtherModel]; mm != nil {
			return mm
		}
		model = OtherModel
	}
	labels := `upstream=` + strconv.Quote(u.name) + `,model=` + strconv.Quote(model)
	mm = &modelMetrics{attempts: map[string]*metrics.Counter{}, transitions: map[string]*metrics.Counter{}}
	for _, r := range attemptResults {
		mm.attempts[r] = m.set.NewCounter(`fender_upstream_attempts_total{` + labels + `,result="` + r + `"}`)
	}
	mm.state = m.set.NewGauge(`fender_breaker_state{`+labels+`}`, nil)
	for _, s := range breakerStates {
		mm.transitions[s] = m.set.NewCounter(`fender_breaker_transitions_total{` + labels + `,to="` + s + `"}`)
	}
	u.models[model] = mm
	return mm
}

// Request records a finished call; code is "ok" or an error code.
func (m *Metrics) Request(upstream, code string, d time.Duration) {
	u := m.up(upstream)
	if c := u.requests[code]; c != nil {
		c.Inc()
	}
	u.reqDur.Update(d.Seconds())
}

// Attempt records one upstream attempt.
func (m *Metrics) Attempt(upstream, model, result string, d time.Duration) {
	u := m.up(upstream)
	if c := m.model(u, model).attempts[result]; c != nil {
		c.Inc()
	}
	u.upDur.Update(d.Seconds())
}

// Retry records a retry.
func (m *Metrics) Retry(upstream string) { m.up(upstream).retries.Inc() }

// RetryBudgetExhausted records a retry the budget refused.
func (m *Metrics) RetryBudgetExhausted(upstream string) { m.up(upstream).budgetExhausted.Inc() }

// Breaker records a breaker entering state to (closed, open or half_open).
func (m *Metrics) Breaker(upstream, model, to string) {
	mm := m.model(m.up(upstream), model)
	for i, s := range breakerStates {
		if s == to {
			mm.state.Set(float64(i))
		}
	}
	if c := mm.transitions[to]; c != nil {
		c.Inc()
	}
}

// CacheResult records how the cache served a call.
func (m *Metrics) CacheResult(_, result string) {
	if c := m.cache[result]; c != nil {
		c.Inc()
	}
}

// Fallback records a call answered by a fallback, kind stale or upstream.
func (m *Metrics) Fallback(upstream, kind string) {
	u := m.up(upstream)
	if kind == "stale" {
		u.fallbackStale.Inc()
	} else {
		u.fallbackUp.Inc()
	}
}

// FirstChunk records the time to the first chunk of a streamed answer.
func (m *Metrics) FirstChunk(upstream string, d time.Duration) {
	m.up(upstream).firstChunk.Update(d.Seconds())
}

// Rejected records a request or connection refused: overloaded, too_large,
// bad_request, forbidden or peer.
func (m *Metrics) Rejected(reason string) {
	if c := m.rejected[reason]; c != nil {
		c.Inc()
	}
}

// Evicted records a cache entry evicted to stay within the bounds.
func (m *Metrics) Evicted() { m.evictions.Inc() }

// ConnOpened records a new client connection.
func (m *Metrics) ConnOpened() { m.connectionsTotal.Inc() }

// ConnClosed records a closed client connection (fender_connections_active
// is read from the socket server).
func (m *Metrics) ConnClosed() {}

// WritePrometheus writes every series, then the process and Go runtime
// metrics, in the Prometheus text format.
func (m *Metrics) WritePrometheus(w io.Writer) {
	m.set.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}

func metricsPush(ctx context.Context, url string, interval time.Duration, write func(io.Writer), logErr func(string, ...any), wg *sync.WaitGroup) error {
	return metrics.InitPushExtWithOptions(ctx, url, interval, write, &metrics.PushOptions{
		Method:    http.MethodPost,
		LogErr:    logErr,
		WaitGroup: wg,
	})
}
