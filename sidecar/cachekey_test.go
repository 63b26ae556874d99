package sidecar

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/policy"
	"github.com/fender-sidecar/fender/stats"
	"github.com/fender-sidecar/fender/store"
)

func keyOf(tb testing.TB, line string, vary ...string) store.Key {
	tb.Helper()
	r := MustDecode(tb, line)
	return cacheKey(r.Upstream, r, vary)
}

func TestCacheKey(t *testing.T) {
	base := `{"id":1,"upstream":"llm","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`
	same := []struct{ name, line string }{
		{"other id", `{"id":"z","upstream":"llm","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`},
		{"keys reordered at every depth", `{"id":1,"body":{"s":"A","a":{"y":[{"q":2,"p":1}],"x":1},"model":"phi3"},"path":"/g","upstream":"llm"}`},
		{"spaces in body", `{"id":1,"upstream":"llm","path":"/g","body":{ "model" : "phi3", "a":{"x":1,"y":[ {"p":1,"q":2} ]},"s":"A"}}`},
		{"escaped string", `{"id":1,"upstream":"llm","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"\u0041"}}`},
		{"explicit POST and model", `{"id":1,"upstream":"llm","method":"POST","model":"phi3","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`},
		{"cache mode", `{"id":1,"upstream":"llm","cache":"refresh","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`},
	}
	differ := []struct{ name, line string }{
		{"upstream", `{"id":1,"upstream":"llm2","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`},
		{"method", `{"id":1,"upstream":"llm","method":"PUT","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`},
		{"path", `{"id":1,"upstream":"llm","path":"/h","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`},
		{"model field", `{"id":1,"upstream":"llm","model":"other","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"A"}}`},
		{"number written otherwise", `{"id":1,"upstream":"llm","path":"/g","body":{"model":"phi3","a":{"x":1.0,"y":[{"p":1,"q":2}]},"s":"A"}}`},
		{"array order", `{"id":1,"upstream":"llm","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":2,"q":1}]},"s":"A"}}`},
		{"string value", `{"id":1,"upstream":"llm","path":"/g","body":{"model":"phi3","a":{"x":1,"y":[{"p":1,"q":2}]},"s":"B"}}`},
		{"body_text of the same bytes", `{"id":1,"upstream":"llm","path":"/g","model":"phi3","body_text":"{\"a\":{\"x\":1,\"y\":[{\"p\":1,\"q\":2}]},\"model\":\"phi3\",\"s\":\"A\"}"}`},
	}
	want := keyOf(t, base)
	for _, tc := range same {
		if got := keyOf(t, tc.line); got != want {
			t.Errorf("%s: key differs, want the same", tc.name)
		}
	}
	for _, tc := range differ {
		if got := keyOf(t, tc.line); got == want {
			t.Errorf("%s: same key, want a different one", tc.name)
		}
	}
	// Vary headers: part of the key only when the policy names them.
	a := `{"id":1,"upstream":"llm","headers":{"X-Tenant":"a"}}`
	b := `{"id":1,"upstream":"llm","headers":{"x-tenant":"b"}}`
	if keyOf(t, a) != keyOf(t, b) {
		t.Error("without vary headers: keys differ, want the same")
	}
	if keyOf(t, a, "X-Tenant") == keyOf(t, b, "X-Tenant") {
		t.Error("with X-Tenant varying: same key, want different")
	}
	if keyOf(t, a, "X-Tenant") != keyOf(t, `{"id":2,"upstream":"llm","headers":{"x-TENANT":"a"}}`, "x-tenant") {
		t.Error("vary header names must match case-insensitively")
	}
}

// BenchmarkHandleCacheHit is the cache-hit path: decode, key, lookup, encode,
// with telemetry off (no hooks) and on (the VictoriaMetrics series).
func BenchmarkHandleCacheHit(b *testing.B) {
	b.Run("telemetry=off", func(b *testing.B) { benchCacheHit(b, nil) })
	b.Run("telemetry=on", func(b *testing.B) { benchCacheHit(b, stats.NewMetrics([]string{"up"}, stats.Gauges{})) })
}

func benchCacheHit(b *testing.B, hooks Hooks) {
	var calls atomic.Int64
	up := fakeLLM(b, &calls)
	cache := store.New(store.Options{})
	defer cache.Close()
	s, err := New(Options{
		Upstreams: []UpstreamConfig{{Name: "up", URL: up.URL, Policy: policy.Default()}},
		Logger:    zerolog.Nop(),
		Cache:     cache,
		Hooks:     hooks,
	})
	if err != nil {
		b.Fatal(err)
	}
	s.Handle(context.Background(), Peer{}, benchLine, nil, nil)
	runHandleBench(b, s)
	if n := calls.Load(); n != 1 {
		b.Fatalf("upstream calls: %d, want 1", n)
	}
}
