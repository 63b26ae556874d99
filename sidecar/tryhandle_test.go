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
		AdminUIDs: []uint32{7},
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
			out, ok, pre := s.TryHandle(Peer{}, []byte(tt.line), nil)
			if ok != tt.wantOK || !strings.Contains(string(out), tt.want) {
				t.Errorf("got %q %v, want ok %v containing %q", out, ok, tt.wantOK, tt.want)
			}
			if !ok && pre == nil {
				t.Errorf("not answered inline and no prepared request")
			}
		})
	}
	// A miss: HandlePrepared answers the prepared request (and fills the
	// cache under the key TryHandle computed, as the hit below shows).
	_, ok, pre := s.TryHandle(Peer{}, benchLine, nil)
	if ok {
		t.Fatal("empty cache: answered inline")
	}
	if out := s.HandlePrepared(t.Context(), Peer{}, pre, nil, nil); !strings.Contains(string(out), `"ok":true`) || strings.Contains(string(out), `"cached":true`) {
		t.Fatalf("HandlePrepared: got %q, want an upstream answer", out)
	}
	out, ok, _ := s.TryHandle(Peer{}, benchLine, nil)
	if !ok || !strings.Contains(string(out), `"cached":true`) {
		t.Errorf("cache hit: got %q %v, want a cached answer", out, ok)
	}
	for _, line := range []string{
		`{"id":"r1","upstream":"up","path":"/api/generate","cache":"refresh","body":{"model":"phi3","prompt":"Where is the dragon?","stream":false}}`,
		`{"id":"r1","upstream":"up","path":"/api/generate","stream":true,"body":{"model":"phi3","prompt":"Where is the dragon?","stream":false}}`,
	} {
		if _, ok, _ := s.TryHandle(Peer{}, []byte(line), nil); ok {
			t.Errorf("%s: answered inline, want Handle", line)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("upstream calls: got %d, want 1", n)
	}

	// A prepared key is not used once the policy it was computed under
	// is replaced: the call computes its key again.
	_, _, pre = s.TryHandle(Peer{}, []byte(`{"id":9,"upstream":"up","path":"/x","headers":{"X-Tenant":"a"},"body":{"model":"m","prompt":"vary"}}`), nil)
	cfg := `{"id":10,"op":"configure","upstream":"up","policy":{"cache_vary_headers":["X-Tenant"]}}`
	if out := s.Handle(t.Context(), Peer{UID: 7, Known: true}, []byte(cfg), nil, nil); !strings.Contains(string(out), `"ok":true`) {
		t.Fatalf("configure: %s", out)
	}
	s.HandlePrepared(t.Context(), Peer{}, pre, nil, nil)
	other := `{"id":11,"upstream":"up","path":"/x","headers":{"X-Tenant":"b"},"body":{"model":"m","prompt":"vary"}}`
	if out, ok, _ := s.TryHandle(Peer{}, []byte(other), nil); ok {
		t.Errorf("another tenant hit the entry stored under the old key: %s", out)
	}
	same := `{"id":12,"upstream":"up","path":"/x","headers":{"X-Tenant":"a"},"body":{"model":"m","prompt":"vary"}}`
	if out, ok, _ := s.TryHandle(Peer{}, []byte(same), nil); !ok {
		t.Errorf("the same tenant missed the entry stored under the new key: %s", out)
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
		if _, ok, _ := s.TryHandle(Peer{}, benchLine, buf[:0]); !ok {
			b.Fatal("not a hit")
		}
	}
}
