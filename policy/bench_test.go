package policy

import "testing"

// BenchmarkBreakerTry is one attempt through a closed breaker: the wrapper's
// probe accounting and go-resiliency's breaker around a no-op attempt.
func BenchmarkBreakerTry(b *testing.B) {
	br := NewBreakers(nil).Get("llm", "phi3", Default())
	ok := func() bool { return false }
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Try(ok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBreakersGet finds the breaker of an upstream and model, from
// every core at once, as each call does.
func BenchmarkBreakersGet(b *testing.B) {
	bs := NewBreakers(nil)
	p := Default()
	models := []string{"phi3", "llama3", "mistral", "qwen"}
	for _, m := range models {
		bs.Get("llm", m, p)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			bs.Get("llm", models[i%len(models)], p)
			i++
		}
	})
}

// BenchmarkJitteredBackoff computes the wait before a retry.
func BenchmarkJitteredBackoff(b *testing.B) {
	p := Default()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = p.JitteredBackoff(i%6, 0.5)
	}
}
