package policy

import (
	"math"
	"sync"
)

// Budget bounds the retries in flight of one upstream, against retry storms:
// retries in flight (including those waiting out a backoff) may not exceed
// max(min, floor(ratio × requests in flight)). Safe for concurrent use.
type Budget struct {
	mu       sync.Mutex
	requests int
	retries  int
}

// Start records a request in flight; call Done when it ends.
func (b *Budget) Start() {
	b.mu.Lock()
	b.requests++
	b.mu.Unlock()
}

// Done records the end of a request started with Start.
func (b *Budget) Done() {
	b.mu.Lock()
	b.requests--
	b.mu.Unlock()
}

// TryRetry takes a retry token when the budget allows one more retry in flight
// under ratio and min. The caller gives it back with EndRetry once that retry
// attempt has ended.
func (b *Budget) TryRetry(ratio float64, min int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	allowed := int(math.Floor(ratio * float64(b.requests)))
	if allowed < min {
		allowed = min
	}
	if b.retries+1 > allowed {
		return false
	}
	b.retries++
	return true
}

// EndRetry gives back a token taken with TryRetry.
func (b *Budget) EndRetry() {
	b.mu.Lock()
	b.retries--
	b.mu.Unlock()
}

// InFlight returns the requests and retries in flight.
func (b *Budget) InFlight() (requests, retries int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.requests, b.retries
}
