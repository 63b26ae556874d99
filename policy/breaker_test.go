package policy

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// transitions records the hook's calls.
type transitions struct {
	mu   sync.Mutex
	list []Transition
}

func (r *transitions) hook(t Transition) {
	r.mu.Lock()
	r.list = append(r.list, t)
	r.mu.Unlock()
}

func (r *transitions) all() []Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.list)
}

// MustHaveTransition fails unless the hook saw upstream/model go from -> to.
func (r *transitions) MustHaveTransition(tb testing.TB, upstream, model string, from, to State) {
	tb.Helper()
	want := Transition{Upstream: upstream, Model: model, From: from, To: to}
	if got := r.all(); !slices.Contains(got, want) {
		tb.Fatalf("transitions = %+v, want one %s -> %s for %s/%q", got, from, to, upstream, model)
	}
}

// testPolicy returns a valid policy with the given breaker settings.
func testPolicy(failures, successes int, cooldown time.Duration) Policy {
	p := Default()
	p.BreakerFailures = failures
	p.BreakerSuccesses = successes
	p.BreakerCooldown = cooldown
	p.BreakerHalfOpenMax = 1
	return p
}

// MustTry makes one attempt through b with the given outcome and fails unless
// the attempt ran.
func MustTry(tb testing.TB, b *Breaker, failure bool) {
	tb.Helper()
	called := false
	if err := b.Try(func() bool { called = true; return failure }); err != nil {
		tb.Fatalf("Try = %v, want nil", err)
	}
	if !called {
		tb.Fatal("Try did not call the attempt")
	}
}

// MustBeRefused fails unless Try returns ErrOpen without calling the attempt.
func MustBeRefused(tb testing.TB, b *Breaker) {
	tb.Helper()
	called := false
	err := b.Try(func() bool { called = true; return false })
	if !errors.Is(err, ErrOpen) {
		tb.Fatalf("Try = %v, want ErrOpen", err)
	}
	if called {
		tb.Fatal("Try called the attempt, want it refused")
	}
}

// MustOpen opens b with failing attempts.
func MustOpen(tb testing.TB, b *Breaker, failures int) {
	tb.Helper()
	for i := 0; i < failures; i++ {
		MustTry(tb, b, true)
	}
	MustState(tb, b, Open)
}

// MustState fails unless b is in state want now.
func MustState(tb testing.TB, b *Breaker, want State) {
	tb.Helper()
	if got := b.State(); got != want {
		tb.Fatalf("State() = %s, want %s", got, want)
	}
}

// MustReachState polls b until it is in state want; go-resiliency turns
// half-open from its own timer on the real clock and takes no clock to inject.
func MustReachState(tb testing.TB, b *Breaker, want State) {
	tb.Helper()
	deadline := time.After(2 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if b.State() == want {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			tb.Fatalf("State() = %s after 2s, want %s", b.State(), want)
		}
	}
}

func TestBreakersKeying(t *testing.T) {
	bs := NewBreakers(nil)
	p := testPolicy(3, 2, time.Minute)
	m1 := bs.Get("llm", "m1", p)
	tests := []struct {
		name     string
		other    *Breaker
		wantSame bool
	}{
		{"same upstream and model", bs.Get("llm", "m1", p), true},
		{"other model", bs.Get("llm", "m2", p), false},
		{"no model", bs.Get("llm", "", p), false},
		{"other upstream same model", bs.Get("small", "m1", p), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := tt.other == m1, tt.wantSame; got != want {
				t.Errorf("same breaker = %v, want %v", got, want)
			}
		})
	}
	if got, want := m1.Model(), "m1"; got != want {
		t.Errorf("Model() = %q, want %q", got, want)
	}
}

func TestBreakersGetConcurrent(t *testing.T) {
	bs := NewBreakers(nil)
	p := testPolicy(3, 2, time.Minute)
	const n = 32
	got := make([]*Breaker, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i] = bs.Get("llm", "m1", p)
		}()
	}
	close(start)
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatalf("Get #%d returned another breaker, want one breaker for one key", i)
		}
	}
	if got, want := len(bs.States("llm")), 1; got != want {
		t.Errorf("len(States) = %d, want %d", got, want)
	}
}

func TestBreakerOpensAfterFailures(t *testing.T) {
	rec := &transitions{}
	bs := NewBreakers(rec.hook)
	p := testPolicy(3, 2, time.Minute)
	b := bs.Get("llm", "m1", p)
	m2 := bs.Get("llm", "m2", p)

	for i := 0; i < p.BreakerFailures-1; i++ {
		MustTry(t, b, true)
		MustState(t, b, Closed)
	}
	MustTry(t, b, true)
	MustState(t, b, Open)
	rec.MustHaveTransition(t, "llm", "m1", Closed, Open)
	MustBeRefused(t, b)

	t.Run("other model stays closed", func(t *testing.T) {
		MustState(t, m2, Closed)
		MustTry(t, m2, false)
		MustTry(t, m2, true)
		MustState(t, m2, Closed)
	})
	t.Run("other upstream stays closed", func(t *testing.T) {
		MustState(t, bs.Get("small", "m1", p), Closed)
	})
	t.Run("one transition", func(t *testing.T) {
		want := []Transition{{Upstream: "llm", Model: "m1", From: Closed, To: Open}}
		if got := rec.all(); !slices.Equal(got, want) {
			t.Errorf("transitions = %+v, want %+v", got, want)
		}
	})
}

func TestBreakerPermanentNeverOpens(t *testing.T) {
	bs := NewBreakers(nil)
	p := testPolicy(2, 1, time.Minute)
	b := bs.Get("llm", "", p)
	for i := 0; i < 50; i++ {
		MustTry(t, b, false)
	}
	MustState(t, b, Closed)
	// One failure after many non-failures is still below the threshold.
	MustTry(t, b, true)
	MustState(t, b, Closed)
}

func TestBreakerHalfOpen(t *testing.T) {
	rec := &transitions{}
	bs := NewBreakers(rec.hook)
	p := testPolicy(2, 2, 50*time.Millisecond)
	b := bs.Get("llm", "m1", p)
	MustOpen(t, b, p.BreakerFailures)
	MustBeRefused(t, b)

	MustReachState(t, b, HalfOpen)
	rec.MustHaveTransition(t, "llm", "m1", Open, HalfOpen)

	// One probe at a time: the second Try is refused while the first is blocked.
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- b.Try(func() bool {
			close(entered)
			<-release
			return false
		})
	}()
	<-entered
	MustBeRefused(t, b)
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("probe Try = %v, want nil", err)
	}
	MustState(t, b, HalfOpen) // 1 of 2 successes

	MustTry(t, b, false)
	MustState(t, b, Closed)
	rec.MustHaveTransition(t, "llm", "m1", HalfOpen, Closed)
	MustTry(t, b, false)

	want := []Transition{
		{Upstream: "llm", Model: "m1", From: Closed, To: Open},
		{Upstream: "llm", Model: "m1", From: Open, To: HalfOpen},
		{Upstream: "llm", Model: "m1", From: HalfOpen, To: Closed},
	}
	if got := rec.all(); !slices.Equal(got, want) {
		t.Errorf("transitions = %+v, want %+v", got, want)
	}
}

func TestBreakerHalfOpenFailureReopens(t *testing.T) {
	rec := &transitions{}
	bs := NewBreakers(rec.hook)
	// Long enough that the re-opened breaker is still open when checked.
	p := testPolicy(2, 2, 200*time.Millisecond)
	b := bs.Get("llm", "m1", p)
	MustOpen(t, b, p.BreakerFailures)
	MustReachState(t, b, HalfOpen)

	MustTry(t, b, true)
	MustState(t, b, Open)
	rec.MustHaveTransition(t, "llm", "m1", HalfOpen, Open)
	MustBeRefused(t, b)

	// And it cools down again.
	MustReachState(t, b, HalfOpen)
}

func TestBreakersReset(t *testing.T) {
	rec := &transitions{}
	bs := NewBreakers(rec.hook)
	p := testPolicy(1, 1, time.Minute)
	m1, m2, own := bs.Get("llm", "m1", p), bs.Get("llm", "m2", p), bs.Get("llm", "", p)
	other := bs.Get("small", "m1", p)
	for _, b := range []*Breaker{m1, m2, own, other} {
		MustOpen(t, b, 1)
	}

	if got, want := bs.Reset("llm", "m1"), 1; got != want {
		t.Errorf("Reset(llm, m1) = %d, want %d", got, want)
	}
	MustState(t, m1, Closed)
	MustState(t, m2, Open)
	MustState(t, own, Open)
	MustState(t, other, Open)
	rec.MustHaveTransition(t, "llm", "m1", Open, Closed)
	MustTry(t, m1, false)

	if got, want := bs.Reset("llm", "nope"), 0; got != want {
		t.Errorf("Reset(llm, nope) = %d, want %d", got, want)
	}

	if got, want := bs.Reset("llm", ""), 3; got != want {
		t.Errorf("Reset(llm, \"\") = %d, want %d", got, want)
	}
	for _, b := range []*Breaker{m1, m2, own} {
		MustState(t, b, Closed)
	}
	MustState(t, other, Open)
	rec.MustHaveTransition(t, "llm", "m2", Open, Closed)
	rec.MustHaveTransition(t, "llm", "", Open, Closed)

	// The reset breaker keeps its settings: one failure opens it again.
	MustTry(t, m2, true)
	MustState(t, m2, Open)
}

func TestBreakersStates(t *testing.T) {
	bs := NewBreakers(nil)
	p := testPolicy(1, 1, time.Minute)
	MustOpen(t, bs.Get("llm", "m1", p), 1)
	bs.Get("llm", "m2", p)
	bs.Get("llm", "", p)
	MustOpen(t, bs.Get("small", "x", p), 1)

	tests := []struct {
		upstream string
		want     map[string]string
	}{
		{"llm", map[string]string{"m1": "open", "m2": "closed", "": "closed"}},
		{"small", map[string]string{"x": "open"}},
		{"none", map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.upstream, func(t *testing.T) {
			got := bs.States(tt.upstream)
			if len(got) != len(tt.want) {
				t.Fatalf("States(%s) = %v, want %v", tt.upstream, got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("States(%s)[%q] = %q, want %q", tt.upstream, k, got[k], v)
				}
			}
		})
	}
}

func TestBreakerSettingsChangeRemakes(t *testing.T) {
	rec := &transitions{}
	bs := NewBreakers(rec.hook)
	p := testPolicy(2, 1, time.Minute)
	b := bs.Get("llm", "m1", p)
	MustOpen(t, b, 2)

	t.Run("other settings keep the breaker", func(t *testing.T) {
		q := p
		q.Retries = 9
		q.Timeout = time.Second
		if got := bs.Get("llm", "m1", q); got != b {
			t.Fatal("Get returned another breaker")
		}
		MustState(t, b, Open)
	})

	t.Run("breaker settings remake it closed", func(t *testing.T) {
		q := p
		q.BreakerFailures = 4
		if got := bs.Get("llm", "m1", q); got != b {
			t.Fatal("Get returned another breaker, want the same one remade")
		}
		MustState(t, b, Closed)
		rec.MustHaveTransition(t, "llm", "m1", Open, Closed)
		for i := 0; i < 3; i++ {
			MustTry(t, b, true)
		}
		MustState(t, b, Closed) // the old threshold of 2 no longer applies
		MustTry(t, b, true)
		MustState(t, b, Open)
		// Same settings again change nothing.
		bs.Get("llm", "m1", q)
		MustState(t, b, Open)
	})

	for _, tt := range []struct {
		name   string
		mutate func(*Policy)
	}{
		{"breaker_successes", func(q *Policy) { q.BreakerSuccesses = 3 }},
		{"breaker_cooldown", func(q *Policy) { q.BreakerCooldown = 2 * time.Minute }},
		{"breaker_half_open_max", func(q *Policy) { q.BreakerHalfOpenMax = 2 }},
	} {
		t.Run("remade on "+tt.name, func(t *testing.T) {
			c := bs.Get("llm", "c-"+tt.name, p)
			MustOpen(t, c, 2)
			q := p
			tt.mutate(&q)
			bs.Get("llm", "c-"+tt.name, q)
			MustState(t, c, Closed)
		})
	}
}

func TestBreakersMaxModels(t *testing.T) {
	bs := NewBreakers(nil)
	p := testPolicy(1, 1, time.Minute)
	var overflow *Breaker
	for i := 0; i < MaxModels+5; i++ {
		model := fmt.Sprintf("m%d", i)
		b := bs.Get("llm", model, p)
		if i < MaxModels {
			if got := b.Model(); got != model {
				t.Fatalf("model %d: Model() = %q, want %q", i, got, model)
			}
			continue
		}
		if got, want := b.Model(), OverflowModel; got != want {
			t.Fatalf("model %d: Model() = %q, want %q", i, got, want)
		}
		if overflow == nil {
			overflow = b
		} else if b != overflow {
			t.Fatalf("model %d: another overflow breaker, want them all shared", i)
		}
	}
	if got, want := len(bs.States("llm")), MaxModels+1; got != want {
		t.Errorf("len(States(llm)) = %d, want %d", got, want)
	}
	if got, want := bs.Get("llm", "m0", p).Model(), "m0"; got != want {
		t.Errorf("known model after overflow: Model() = %q, want %q", got, want)
	}
	// The overflow breaker is one breaker: a failure for one model opens it for all.
	MustOpen(t, bs.Get("llm", "fresh-1", p), 1)
	MustState(t, bs.Get("llm", "fresh-2", p), Open)
	// The bound is per upstream.
	if got, want := bs.Get("small", "m9999", p).Model(), "m9999"; got != want {
		t.Errorf("other upstream: Model() = %q, want %q", got, want)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", Open: "open", HalfOpen: "half_open"} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", s, got, want)
		}
	}
}
