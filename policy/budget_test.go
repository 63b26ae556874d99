package policy

import (
	"sync"
	"sync/atomic"
	"testing"
)

// MustStart records n requests in flight on b.
func MustStart(tb testing.TB, b *Budget, n int) {
	tb.Helper()
	before, _ := b.InFlight()
	for i := 0; i < n; i++ {
		b.Start()
	}
	if got, _ := b.InFlight(); got != before+n {
		tb.Fatalf("requests in flight = %d, want %d", got, before+n)
	}
}

func TestBudget(t *testing.T) {
	tests := []struct {
		name     string
		requests int
		ratio    float64
		min      int
		allowed  int
	}{
		{"10 in flight, min wins", 10, 0.2, 3, 3},
		{"100 in flight, ratio wins", 100, 0.2, 3, 20},
		{"floor of the ratio", 19, 0.2, 3, 3},
		{"floor of the ratio above min", 24, 0.2, 3, 4},
		{"none in flight, min", 0, 0.2, 3, 3},
		{"ratio 0 min 0 allows none", 50, 0, 0, 0},
		{"ratio 1", 7, 1, 0, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Budget
			MustStart(t, &b, tt.requests)
			for i := 0; i < tt.allowed; i++ {
				if !b.TryRetry(tt.ratio, tt.min) {
					t.Fatalf("retry %d refused, want %d allowed", i+1, tt.allowed)
				}
			}
			if b.TryRetry(tt.ratio, tt.min) {
				t.Fatalf("retry %d allowed, want only %d", tt.allowed+1, tt.allowed)
			}
			if _, got := b.InFlight(); got != tt.allowed {
				t.Errorf("retries in flight = %d, want %d", got, tt.allowed)
			}
		})
	}
}

func TestBudgetEndRetryGivesBack(t *testing.T) {
	var b Budget
	MustStart(t, &b, 10)
	for i := 0; i < 3; i++ {
		if !b.TryRetry(0.2, 3) {
			t.Fatalf("retry %d refused, want allowed", i+1)
		}
	}
	if b.TryRetry(0.2, 3) {
		t.Fatal("4th retry allowed, want refused")
	}
	b.EndRetry()
	if !b.TryRetry(0.2, 3) {
		t.Fatal("retry after EndRetry refused, want allowed")
	}
	if b.TryRetry(0.2, 3) {
		t.Fatal("retry over the budget allowed after EndRetry, want refused")
	}
	for i := 0; i < 3; i++ {
		b.EndRetry()
	}
	for i := 0; i < 10; i++ {
		b.Done()
	}
	if req, ret := b.InFlight(); req != 0 || ret != 0 {
		t.Errorf("InFlight() = %d, %d, want 0, 0", req, ret)
	}
}

func TestBudgetShrinksWithRequests(t *testing.T) {
	var b Budget
	MustStart(t, &b, 100)
	for i := 0; i < 20; i++ {
		if !b.TryRetry(0.2, 3) {
			t.Fatalf("retry %d refused, want allowed", i+1)
		}
	}
	for i := 0; i < 90; i++ {
		b.Done()
	}
	for i := 0; i < 17; i++ {
		b.EndRetry()
	}
	// 10 requests, 3 retries in flight: max(3, floor(2)) = 3, none left.
	if b.TryRetry(0.2, 3) {
		t.Error("retry allowed with 3 of 3 in flight, want refused")
	}
}

func TestBudgetConcurrent(t *testing.T) {
	const requests, workers = 50, 64
	var b Budget
	MustStart(t, &b, requests)
	allowed := 10 // floor(0.2 * 50)

	t.Run("exactly the budget is taken", func(t *testing.T) {
		var taken atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if b.TryRetry(0.2, 3) {
					taken.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if got, want := int(taken.Load()), allowed; got != want {
			t.Errorf("retries taken = %d, want %d", got, want)
		}
		for i := 0; i < int(taken.Load()); i++ {
			b.EndRetry()
		}
	})

	t.Run("never over the budget", func(t *testing.T) {
		var held, peak atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.Start()
				defer b.Done()
				for j := 0; j < 200; j++ {
					if !b.TryRetry(0, allowed) {
						continue
					}
					n := held.Add(1)
					for {
						p := peak.Load()
						if n <= p || peak.CompareAndSwap(p, n) {
							break
						}
					}
					held.Add(-1)
					b.EndRetry()
				}
			}()
		}
		wg.Wait()
		if got := peak.Load(); got > int64(allowed) || got < 1 {
			t.Errorf("peak retries held = %d, want in [1, %d]", got, allowed)
		}
		if req, ret := b.InFlight(); req != requests || ret != 0 {
			t.Errorf("InFlight() = %d, %d, want %d, 0", req, ret, requests)
		}
	})
}
