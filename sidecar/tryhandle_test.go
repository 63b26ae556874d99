package sidecar

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/policy"
	"github.com/fender-sidecar/fender/stats"
	"github.com/fender-sidecar/fender/store"
)

func TestTryHandle(t *testing.T) {
	var calls atomic.Int64
	up := fakeLLM(t, &calls)
	cache := store.New(store.Options{})
	defer cache.Close()
	s, err := New(Options{
		Upstreams: []UpstreamConfig{{Name: "up", URL: up.URL, Policy: policy.Default()}},
		Logger:    zerolog.Nop(),
		Cache:     cache,
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, line string
		wantOK     bool
		want       string // substring of the answer
	}{
		{"ping", `{"id":1,"op":"ping"}`, true, `{"id":1,"ok":true}`},
		{"bad line", `{"id":2,"op":"nope"}`, true, `"code":"bad_request"`},
		{"cache miss needs Handle", string(benchLine), false, ""},
		{"health needs Handle", `{"id":3,"op":"health"}`, false, ""},
		{"unknown upstream needs Handle", `{"id":4,"upstream":"ghost"}`, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, ok := s.TryHandle(Peer{}, []byte(tt.line), nil)
			if ok != tt.wantOK || !strings.Contains(string(out), tt.want) {
				t.Errorf("got %q %v, want ok %v containing %q", out, ok, tt.wantOK, tt.want)
			}
		})
	}
	s.Handle(t.Context(), Peer{}, benchLine, nil, nil) // fills the cache
	out, ok := s.TryHandle(Peer{}, benchLine, nil)
	if !ok || !strings.Contains(string(out), `"cached":true`) {
		t.Errorf("cache hit: got %q %v, want a cached answer", out, ok)
	}
	for _, line := range []string{
		`{"id":"r1","upstream":"up","path":"/api/generate","cache":"refresh","body":{"model":"phi3","prompt":"Where is the dragon?","stream":false}}`,
		`{"id":"r1","upstream":"up","path":"/api/generate","stream":true,"body":{"model":"phi3","prompt":"Where is the dragon?","stream":false}}`,
	} {
		if _, ok := s.TryHandle(Peer{}, []byte(line), nil); ok {
			t.Errorf("%s: answered inline, want Handle", line)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("upstream calls: got %d, want 1", n)
	}
}

// BenchmarkTryHandleHit is a cache hit answered inline, one at a time.
func BenchmarkTryHandleHit(b *testing.B) {
	var calls atomic.Int64
	up := fakeLLM(b, &calls)
	cache := store.New(store.Options{})
	defer cache.Close()
	s, err := New(Options{
		Upstreams: []UpstreamConfig{{Name: "up", URL: up.URL, Policy: policy.Default()}},
		Logger:    zerolog.Nop(),
		Cache:     cache,
		Hooks:     stats.NewMetrics([]string{"up"}, stats.Gauges{}),
	})
	if err != nil {
		b.Fatal(err)
	}
	s.Handle(b.Context(), Peer{}, benchLine, nil, nil)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := s.TryHandle(Peer{}, benchLine, buf[:0]); !ok {
			b.Fatal("not a hit")
		}
	}
}
