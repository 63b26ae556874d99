package policy

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eapache/go-resiliency/breaker"
)

// ErrOpen is returned by Breaker.Try when the breaker is open, or half-open
// with all of its probes busy: the attempt was not made.
var ErrOpen = errors.New("circuit breaker is open")

// errFailure is what an attempt reports to go-resiliency's breaker as a failure.
var errFailure = errors.New("breaker failure")

// State is a breaker state.
type State uint8

// The breaker states. From Closed the breaker opens after BreakerFailures
// failures with no error-free BreakerCooldown; from Open it turns HalfOpen
// after BreakerCooldown; from HalfOpen it closes after BreakerSuccesses
// successes and re-opens on one failure.
const (
	Closed State = iota
	Open
	HalfOpen
)

// String returns the wire name: closed, open, half_open.
func (s State) String() string {
	switch s {
	case Open:
		return "open"
	case HalfOpen:
		return "half_open"
	}
	return "closed"
}

func fromLib(s breaker.State) State {
	switch s {
	case breaker.Open:
		return Open
	case breaker.HalfOpen:
		return HalfOpen
	}
	return Closed
}

// Transition is one breaker state change, handed to the Breakers hook.
type Transition struct {
	Upstream, Model string
	From, To        State
}

// MaxModels bounds the breakers of one upstream: past it, further models share
// the breaker of model OverflowModel, so a client cannot grow memory without
// bound by naming random models.
const MaxModels = 1024

// OverflowModel is the breaker key shared by models past MaxModels.
const OverflowModel = "other"

type breakerKey struct{ upstream, model string }

// Breakers is the set of circuit breakers, one per (upstream, model), made on
// first use. Safe for concurrent use; Get takes no lock once a breaker exists.
type Breakers struct {
	m            sync.Map // breakerKey -> *Breaker
	mu           sync.Mutex
	models       map[string]int // breakers per upstream
	onTransition func(Transition)
}

// NewBreakers returns an empty set; onTransition (may be nil) is called for
// every state change, in order per breaker.
func NewBreakers(onTransition func(Transition)) *Breakers {
	if onTransition == nil {
		onTransition = func(Transition) {}
	}
	return &Breakers{models: map[string]int{}, onTransition: onTransition}
}

// Get returns the breaker of (upstream, model) configured by p, making it when
// missing. When p's breaker settings changed since the breaker was made, the
// breaker is remade closed under the new settings.
func (bs *Breakers) Get(upstream, model string, p Policy) *Breaker {
	s := settingsOf(p)
	k := breakerKey{upstream, model}
	if v, ok := bs.m.Load(k); ok {
		b := v.(*Breaker)
		b.adopt(s)
		return b
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.models[upstream] >= MaxModels {
		k.model = OverflowModel
	}
	if v, ok := bs.m.Load(k); ok {
		b := v.(*Breaker)
		b.adopt(s)
		return b
	}
	b := &Breaker{upstream: upstream, model: k.model, hook: bs.onTransition}
	b.cur.Store(newInner(s))
	bs.m.Store(k, b)
	bs.models[upstream]++
	return b
}

// States returns the observed state of every breaker of upstream, by model.
func (bs *Breakers) States(upstream string) map[string]string {
	out := map[string]string{}
	bs.m.Range(func(key, v any) bool {
		if k := key.(breakerKey); k.upstream == upstream {
			out[k.model] = v.(*Breaker).State().String()
		}
		return true
	})
	return out
}

// Reset closes the breakers of upstream ("" = all) and model ("" = all of the
// upstream's) and returns how many it matched.
func (bs *Breakers) Reset(upstream, model string) int {
	n := 0
	bs.m.Range(func(key, v any) bool {
		k := key.(breakerKey)
		if (upstream == "" || k.upstream == upstream) && (model == "" || k.model == model) {
			v.(*Breaker).reset()
			n++
		}
		return true
	})
	return n
}

type settings struct {
	failures, successes, halfOpenMax int
	cooldown                         time.Duration
}

func settingsOf(p Policy) settings {
	return settings{p.BreakerFailures, p.BreakerSuccesses, p.BreakerHalfOpenMax, p.BreakerCooldown}
}

type inner struct {
	s  settings
	cb *breaker.Breaker
}

func newInner(s settings) *inner {
	return &inner{s: s, cb: breaker.New(s.failures, s.successes, s.cooldown)}
}

// Breaker is one circuit breaker: go-resiliency's breaker, plus a limit on
// concurrent half-open probes and transition reporting. Safe for concurrent use.
type Breaker struct {
	upstream, model string
	hook            func(Transition)
	cur             atomic.Pointer[inner]
	probes          atomic.Int64

	mu   sync.Mutex   // orders observations and hook calls
	last atomic.Int32 // the State last observed; changed under mu
}

// Model returns the breaker's model key ("" for the upstream's own).
func (b *Breaker) Model() string { return b.model }

// State returns the breaker's current state, reporting any transition that
// happened since it was last observed.
func (b *Breaker) State() State { return b.observe() }

// Try makes one attempt through the breaker. attempt returns true when its
// outcome is a breaker failure. Try returns ErrOpen, without calling attempt,
// when the breaker is open or half-open with BreakerHalfOpenMax probes busy.
func (b *Breaker) Try(attempt func() (failure bool)) error {
	in := b.cur.Load()
	st := b.observe()
	if st == Open {
		return ErrOpen
	}
	if st == HalfOpen {
		if b.probes.Add(1) > int64(in.s.halfOpenMax) {
			b.probes.Add(-1)
			return ErrOpen
		}
		defer b.probes.Add(-1)
	}
	err := in.cb.Run(func() error {
		if attempt() {
			return errFailure
		}
		return nil
	})
	b.observe()
	if errors.Is(err, breaker.ErrBreakerOpen) {
		return ErrOpen
	}
	return nil
}

func (b *Breaker) adopt(s settings) {
	if in := b.cur.Load(); in.s != s {
		b.cur.CompareAndSwap(in, newInner(s))
		b.observe()
	}
}

func (b *Breaker) reset() {
	in := b.cur.Load()
	b.cur.Store(newInner(in.s))
	b.observe()
}

// observe reads the state and reports the transitions since the last
// observation. go-resiliency has no hook of its own, and turns half-open from a
// timer, so a change seen late is reported with the states it must have passed
// through (closed -> open -> half_open -> closed).
func (b *Breaker) observe() State {
	now := fromLib(b.cur.Load().cb.GetState())
	if State(b.last.Load()) == now {
		return now // the common case, without the lock
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	from := State(b.last.Load())
	if from == now {
		return now
	}
	b.last.Store(int32(now))
	for from != now {
		var next State
		switch {
		case from == Closed:
			next = Open
		case from == Open && now == Closed:
			// A reset or a remade breaker closes directly.
			next = Closed
		case from == Open:
			next = HalfOpen
		default: // HalfOpen
			next = now
		}
		b.hook(Transition{Upstream: b.upstream, Model: b.model, From: from, To: next})
		from = next
	}
	return now
}
