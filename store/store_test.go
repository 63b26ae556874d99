package store

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Now()} }

func key(i int) Key {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	return sha256.Sum256(b[:])
}

func entry(c *clock, body string, ttl, stale time.Duration) *Entry {
	now := c.Now()
	return &Entry{Upstream: "llm", Status: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: []byte(body), Fresh: now.Add(ttl), Stale: now.Add(ttl + stale)}
}

func MustStore(tb testing.TB, c *clock, maxEntries int, maxBytes int64) *Store {
	tb.Helper()
	s := New(Options{MaxEntries: maxEntries, MaxBytes: maxBytes, Now: c.Now})
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestFreshStaleGone(t *testing.T) {
	c := newClock()
	s := MustStore(t, c, 10, 1<<20)
	s.Set(key(1), entry(c, "a", time.Minute, time.Hour))
	if e, fresh, ok := s.Get(key(1)); !ok || !fresh || string(e.Body) != "a" {
		t.Fatalf("fresh: got %v %v %v, want the entry, fresh", e, fresh, ok)
	}
	c.Add(2 * time.Minute)
	if e, fresh, ok := s.Get(key(1)); !ok || fresh || string(e.Body) != "a" {
		t.Errorf("past the TTL: got fresh=%v ok=%v, want stale", fresh, ok)
	}
	c.Add(time.Hour)
	if _, _, ok := s.Get(key(1)); ok {
		t.Error("past the stale window: got the entry, want none")
	}
	if _, _, ok := s.Get(key(2)); ok {
		t.Error("never stored: got an entry")
	}
}

func TestEntryBoundEvictsLeastRecentlyUsed(t *testing.T) {
	c := newClock()
	var evicted atomic.Int64
	s := New(Options{MaxEntries: 3, MaxBytes: 1 << 20, Now: c.Now, OnEvict: func() { evicted.Add(1) }})
	defer s.Close()
	for i := 1; i <= 3; i++ {
		s.Set(key(i), entry(c, "x", time.Minute, 0))
	}
	s.Get(key(1)) // 1 is now the most recently used; 2 the least
	s.Set(key(4), entry(c, "x", time.Minute, 0))
	for i, want := range map[int]bool{1: true, 2: false, 3: true, 4: true} {
		if _, _, ok := s.Get(key(i)); ok != want {
			t.Errorf("key %d present: got %v, want %v", i, ok, want)
		}
	}
	if s.Len() != 3 || s.Evictions() != 1 || evicted.Load() != 1 {
		t.Errorf("got len %d, evictions %d (hook %d); want 3, 1, 1", s.Len(), s.Evictions(), evicted.Load())
	}
}

// TestSecondChance pins the CLOCK eviction: a referenced entry at the back
// gets one more lap; when every entry is referenced, the oldest still goes
// (the loop is bounded) and the store stays within its bound.
func TestSecondChance(t *testing.T) {
	c := newClock()
	s := New(Options{MaxEntries: 4, MaxBytes: 1 << 20, Now: c.Now})
	defer s.Close()
	for i := 1; i <= 4; i++ {
		s.Set(key(i), entry(c, "x", time.Minute, 0))
	}
	for i := 1; i <= 4; i++ {
		s.Get(key(i)) // all referenced
	}
	s.Set(key(5), entry(c, "x", time.Minute, 0))
	if s.Len() != 4 || s.Evictions() != 1 {
		t.Fatalf("got len %d, evictions %d; want 4, 1", s.Len(), s.Evictions())
	}
	if _, _, ok := s.Get(key(1)); ok {
		t.Error("all referenced: the oldest (1) should have gone")
	}
	// 2, 3, 4 lost their bits in that pass; 5 is new. Reading 2 again
	// spares it: the next eviction takes 3, then 4.
	s.Get(key(2))
	s.Set(key(6), entry(c, "x", time.Minute, 0))
	s.Set(key(7), entry(c, "x", time.Minute, 0))
	for i, want := range map[int]bool{2: true, 3: false, 4: false, 5: true, 6: true, 7: true} {
		if _, _, ok := s.Get(key(i)); ok != want {
			t.Errorf("key %d present: got %v, want %v", i, ok, want)
		}
	}
}

// TestGetSetConcurrent runs hits, which set reference bits without the
// store's lock, against sets that evict (run it with -race).
func TestGetSetConcurrent(t *testing.T) {
	c := newClock()
	s := New(Options{MaxEntries: 64, MaxBytes: 1 << 20, Now: c.Now})
	defer s.Close()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				k := key((i*7 + g) % 200)
				if i%3 == 0 {
					s.Set(k, entry(c, "x", time.Minute, 0))
				} else {
					s.Get(k)
				}
			}
		}()
	}
	wg.Wait()
	if n := s.Len(); n > 64 {
		t.Errorf("len %d over the bound of 64", n)
	}
}

func TestByteBound(t *testing.T) {
	c := newClock()
	s := MustStore(t, c, 1000, 10_000)
	body := string(make([]byte, 1000))
	for i := 0; i < 100; i++ {
		s.Set(key(i), entry(c, body, time.Minute, 0))
		if s.Bytes() > 10_000 {
			t.Fatalf("after %d sets: %d bytes, over the 10000 bound", i+1, s.Bytes())
		}
	}
	if n := s.Len(); n == 0 || int64(n)*1000 > 10_000 {
		t.Errorf("entries: got %d, want some, each counting at least its 1000-byte body", n)
	}
	// An entry larger than the whole bound is not stored and evicts nothing.
	before := s.Len()
	s.Set(key(1000), entry(c, string(make([]byte, 20_000)), time.Minute, 0))
	if _, _, ok := s.Get(key(1000)); ok || s.Len() != before {
		t.Errorf("oversized entry: stored %v, len %d; want not stored, len %d", ok, s.Len(), before)
	}
}

func TestReplaceAccountsOnce(t *testing.T) {
	c := newClock()
	s := MustStore(t, c, 10, 1<<20)
	for i := 0; i < 5; i++ {
		s.Set(key(1), entry(c, "same key", time.Minute, 0))
	}
	want := entry(c, "same key", time.Minute, 0).Size()
	if s.Len() != 1 || s.Bytes() != want {
		t.Errorf("got len %d bytes %d, want 1 and %d", s.Len(), s.Bytes(), want)
	}
}

func TestPurge(t *testing.T) {
	c := newClock()
	s := MustStore(t, c, 10, 1<<20)
	s.Set(key(1), entry(c, "a", time.Minute, 0))
	s.Set(key(2), entry(c, "b", time.Minute, 0))
	other := entry(c, "c", time.Minute, 0)
	other.Upstream = "small"
	s.Set(key(3), other)
	if n := s.Purge("llm"); n != 2 {
		t.Errorf("purge llm: got %d, want 2", n)
	}
	if _, _, ok := s.Get(key(3)); !ok {
		t.Error("purge llm dropped small's entry")
	}
	if n := s.Purge(""); n != 1 || s.Len() != 0 || s.Bytes() != 0 {
		t.Errorf("purge all: got %d, len %d, bytes %d; want 1, 0, 0", n, s.Len(), s.Bytes())
	}
}

func TestJanitorDropsExpired(t *testing.T) {
	s := New(Options{MaxEntries: 10, MaxBytes: 1 << 20, JanitorInterval: 5 * time.Millisecond})
	defer s.Close()
	now := time.Now()
	s.Set(key(1), &Entry{Body: []byte("x"), Fresh: now.Add(10 * time.Millisecond), Stale: now.Add(20 * time.Millisecond)})
	deadline := time.Now().Add(5 * time.Second)
	for s.Len() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s.Len() != 0 || s.Bytes() != 0 {
		t.Errorf("after expiry: len %d bytes %d, want 0 0", s.Len(), s.Bytes())
	}
}

// TestMillionAnswersStayWithinBounds is the bound's proof: a million distinct
// answers into a small cache leave it within both bounds, and the Go heap
// after a GC near where it started.
func TestMillionAnswersStayWithinBounds(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts a million entries")
	}
	const maxEntries, maxBytes = 1000, 256 << 10
	c := newClock()
	s := MustStore(t, c, maxEntries, maxBytes)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	body := make([]byte, 200)
	for i := 0; i < 1_000_000; i++ {
		binary.BigEndian.PutUint64(body, uint64(i))
		s.Set(key(i), &Entry{Upstream: "llm", Status: 200, Body: append([]byte(nil), body...),
			Fresh: c.Now().Add(time.Hour), Stale: c.Now().Add(2 * time.Hour)})
		if i%100_000 == 0 && (s.Len() > maxEntries || s.Bytes() > maxBytes) {
			t.Fatalf("after %d: len %d bytes %d, over the bounds", i, s.Len(), s.Bytes())
		}
	}
	if s.Len() > maxEntries || s.Bytes() > maxBytes {
		t.Errorf("len %d bytes %d, want <= %d and <= %d", s.Len(), s.Bytes(), maxEntries, maxBytes)
	}
	if got := s.Evictions(); got < 1_000_000-maxEntries {
		t.Errorf("evictions: got %d, want >= %d", got, 1_000_000-maxEntries)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	// The bounded cache holds at most 256 KiB of accounted bytes; allow 8 MiB
	// for maps and runtime noise. Unbounded, a million 200-byte answers would
	// hold hundreds of MiB.
	if grown > 8<<20 {
		t.Errorf("heap grew by %d bytes after a GC, want < 8 MiB", grown)
	}
	t.Logf("len %d, bytes %d, evictions %d, heap growth %d KiB", s.Len(), s.Bytes(), s.Evictions(), grown>>10)
}

func TestSnapshotRoundTrip(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "cache.snap")
	s := MustStore(t, c, 10, 1<<20)
	s.Set(key(1), entry(c, "one", time.Minute, time.Hour))
	s.Set(key(2), entry(c, "two", 2*time.Minute, time.Hour))
	s.Set(key(3), entry(c, "gone soon", time.Millisecond, 0))
	c.Add(time.Second) // key 3 is past its stale window now
	if n, err := s.Save(path); err != nil || n != 2 {
		t.Fatalf("save: got %d %v, want 2 entries", n, err)
	}
	c.Add(90 * time.Second) // downtime: key 1 turns stale, key 2 stays fresh
	r := MustStore(t, c, 10, 1<<20)
	if n, err := r.Load(path); err != nil || n != 2 {
		t.Fatalf("load: got %d %v, want 2", n, err)
	}
	if e, fresh, ok := r.Get(key(2)); !ok || !fresh || string(e.Body) != "two" || e.Header.Get("Content-Type") != "application/json" {
		t.Errorf("key 2: got %+v fresh %v ok %v, want fresh \"two\" with headers", e, fresh, ok)
	}
	if _, fresh, ok := r.Get(key(1)); !ok || fresh {
		t.Errorf("key 1: got fresh %v ok %v, want stale (its TTL passed during the downtime)", fresh, ok)
	}
	if _, _, ok := r.Get(key(3)); ok {
		t.Error("key 3 was past its stale window and loaded anyway")
	}
}

func TestSnapshotCorruptLoadsNothing(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.snap")
	s := MustStore(t, c, 10, 1<<20)
	for i := 0; i < 5; i++ {
		s.Set(key(i), entry(c, "body", time.Minute, 0))
	}
	if _, err := s.Save(good); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(good)
	flipped := append([]byte(nil), data...)
	flipped[len(flipped)-3] ^= 0xff
	cases := map[string][]byte{
		"empty":      {},
		"garbage":    []byte("not a snapshot at all\n"),
		"truncated":  data[:len(data)/2],
		"flipped":    flipped,
		"magic only": []byte(snapshotMagic),
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			os.WriteFile(path, content, 0o600)
			r := MustStore(t, c, 10, 1<<20)
			n, err := r.Load(path)
			if !errors.Is(err, ErrCorrupt) || n != 0 || r.Len() != 0 {
				t.Errorf("got %d %v len %d, want ErrCorrupt and nothing loaded", n, err, r.Len())
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		r := MustStore(t, c, 10, 1<<20)
		if _, err := r.Load(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("got %v, want os.ErrNotExist", err)
		}
	})
}

func TestSnapshotIsAtomic(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.snap")
	os.WriteFile(path, []byte("previous"), 0o600)
	s := MustStore(t, c, 10, 1<<20)
	s.Set(key(1), entry(c, "one", time.Minute, 0))
	if _, err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	files, _ := os.ReadDir(dir)
	if len(files) != 1 {
		t.Errorf("files in the directory: got %d, want 1 (no temporary left behind)", len(files))
	}
}

func TestConcurrentUse(t *testing.T) {
	c := newClock()
	s := MustStore(t, c, 64, 1<<20)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := key((g*7 + i) % 200)
				s.Set(k, entry(c, "v", time.Minute, 0))
				s.Get(k)
				if i%500 == 0 {
					s.Purge("")
				}
			}
		}()
	}
	wg.Wait()
	if s.Len() > 64 {
		t.Errorf("len %d over the bound 64", s.Len())
	}
	var sum int64
	s.mu.Lock()
	for _, it := range s.index {
		sum += it.size
	}
	n := s.lru.Len()
	s.mu.Unlock()
	if sum != s.Bytes() || n != s.Len() {
		t.Errorf("accounting: sum of sizes %d vs bytes %d, list %d vs index %d", sum, s.Bytes(), n, s.Len())
	}
}

// BenchmarkGetHit is the cache-hit lookup.
func BenchmarkGetHit(b *testing.B) {
	c := newClock()
	s := MustStore(b, c, 10000, 64<<20)
	for i := 0; i < 1000; i++ {
		s.Set(key(i), entry(c, `{"response":"cached"}`, time.Hour, 0))
	}
	k := key(500)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, fresh, _ := s.Get(k); !fresh {
				b.Fatal("miss")
			}
		}
	})
}
