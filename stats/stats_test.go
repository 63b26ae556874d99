package stats

import (
	"math"
	"sync"
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	samples := make([]float64, 100)
	for i := range samples {
		samples[i] = float64(100 - i) // 100..1, unsorted
	}
	got := percentiles(samples)
	want := Latency{Avg: 50.5, P50: 50, P95: 95, P99: 99}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got := percentiles(nil); got != (Latency{}) {
		t.Errorf("no samples: got %+v, want zeros", got)
	}
	if got := percentiles([]float64{7}); got != (Latency{7, 7, 7, 7}) {
		t.Errorf("one sample: got %+v", got)
	}
}

func TestRecorderCountsAndRates(t *testing.T) {
	r := New()
	r.Register("llm")
	for i := 0; i < 8; i++ {
		r.Request("llm", "ok", time.Duration(i+1)*time.Millisecond)
	}
	r.Request("llm", "timeout", 10*time.Millisecond)
	r.Request("llm", "upstream_status", 10*time.Millisecond)
	r.Request("ghost", "unknown_upstream", 0) // overall only
	r.CacheResult("llm", "hit")
	r.CacheResult("llm", "hit")
	r.CacheResult("llm", "hit")
	r.CacheResult("llm", "miss")
	r.CacheResult("llm", "coalesced")
	r.CacheResult("llm", "stale")
	r.Retry("llm")
	r.BreakerOpened("llm")
	r.Fallback("llm", "stale")

	llm := r.Upstreams()["llm"]
	if llm.Requests != 10 || llm.Success != 8 || llm.Errors != 2 || llm.SuccessRate != 0.8 {
		t.Errorf("llm requests: got %d/%d/%d rate %v, want 10/8/2 0.8", llm.Requests, llm.Success, llm.Errors, llm.SuccessRate)
	}
	if llm.CacheHits != 3 || llm.CacheMisses != 1 || llm.CacheHitRate != 0.75 || llm.Coalesced != 1 {
		t.Errorf("llm cache: got %d/%d rate %v coalesced %d, want 3/1 0.75 1", llm.CacheHits, llm.CacheMisses, llm.CacheHitRate, llm.Coalesced)
	}
	if llm.Retries != 1 || llm.BreakerOpens != 1 || llm.Fallbacks != 1 {
		t.Errorf("llm: got retries %d opens %d fallbacks %d, want 1 1 1", llm.Retries, llm.BreakerOpens, llm.Fallbacks)
	}
	if llm.LatencyMs.P50 != 5 || llm.LatencyMs.P99 != 10 {
		t.Errorf("llm latency: got %+v, want p50 5, p99 10", llm.LatencyMs)
	}
	all := r.Overall()
	if all.Requests != 11 || math.Abs(all.SuccessRate-8.0/11) > 1e-9 {
		t.Errorf("overall: got %d requests rate %v, want 11, 8/11", all.Requests, all.SuccessRate)
	}
	if _, ok := r.Upstreams()["ghost"]; ok {
		t.Error("an unregistered upstream got statistics of its own")
	}
}

func TestWindowIsBounded(t *testing.T) {
	r := New()
	r.Register("llm")
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				r.Request("llm", "ok", time.Millisecond)
			}
		}()
	}
	wg.Wait()
	s := r.Upstreams()["llm"]
	if s.Requests != 20000 || s.LatencyMs.P99 != 1 {
		t.Errorf("got %d requests p99 %v, want 20000 and 1", s.Requests, s.LatencyMs.P99)
	}
}

func TestFirstChunk(t *testing.T) {
	r := New()
	r.Register("llm")
	r.FirstChunk("llm", 20*time.Millisecond)
	r.FirstChunk("llm", 40*time.Millisecond)
	s := r.Upstreams()["llm"]
	if s.Streams != 2 || s.FirstChunkMs.P50 != 20 || s.FirstChunkMs.Avg != 30 {
		t.Errorf("got streams %d first chunk %+v, want 2, p50 20, avg 30", s.Streams, s.FirstChunkMs)
	}
	if r.Overall().Streams != 2 {
		t.Errorf("overall streams: got %d, want 2", r.Overall().Streams)
	}
}
