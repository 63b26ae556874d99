// Package store is fender's answer cache: go-cache for the TTL store and its
// expiry, plus what go-cache lacks, a bound on entries and on bytes enforced by
// evicting the least recently used entries. Memory never grows past the
// bounds, whatever the traffic.
//
// Recency is kept the CLOCK way (second chance): a hit only sets its entry's
// referenced bit, with no lock; eviction, under the store's lock, gives a
// referenced entry at the back of the list one more lap at the front and
// evicts the first unreferenced one. So a cache hit takes only go-cache's
// shared read lock.
//
// An entry is fresh until its TTL ends, then stale for its stale window (kept
// to answer when the upstream fails), then gone. store is a leaf: it knows no
// policy and no socket; evictions are reported through a hook.
package store

import (
	"container/list"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	gocache "github.com/patrickmn/go-cache"
)

// Key identifies a cached answer (a SHA-256 digest).
type Key [32]byte

// Entry is one cached upstream answer. Entries are shared between readers:
// never modify one after Set.
type Entry struct {
	Upstream string
	Status   int
	Header   http.Header
	Body     []byte
	// Encoded is the answer's headers and body as they appear in an answer
	// line, encoded once; a holder of Encoded may leave Header and Body nil
	// and give the body's length in BodyLen.
	Encoded []byte
	BodyLen int
	Fresh   time.Time // fresh until
	Stale   time.Time // served stale (on errors) until
}

// overhead approximates what an entry costs beyond its body and headers: the
// key twice, the list element, the maps' slots, the structs.
const overhead = 256

// Size is what the entry counts against the byte bound: at least its body.
func (e *Entry) Size() int64 {
	n := int64(len(e.Body)+e.BodyLen+len(e.Encoded)+len(e.Upstream)) + overhead
	for k, vs := range e.Header {
		n += int64(len(k))
		for _, v := range vs {
			n += int64(len(v)) + 16
		}
	}
	return n
}

// Options configure a Store.
type Options struct {
	MaxEntries int
	MaxBytes   int64
	// Now is the clock (tests set it); nil means time.Now.
	Now func() time.Time
	// OnEvict is called for each entry evicted to stay within the bounds.
	OnEvict func()
	// JanitorInterval is how often expired entries are dropped; 0 = 1 minute.
	JanitorInterval time.Duration
}

// item is an entry in the store, with its place in the LRU list.
type item struct {
	key  string
	e    *Entry
	size int64
	elem *list.Element
	gone atomic.Bool // removed from the index; set under Store.mu
	ref  atomic.Bool // read since it was inserted or last passed over
}

// Store is a bounded TTL cache. Safe for concurrent use.
type Store struct {
	opts Options
	now  func() time.Time
	gc   *gocache.Cache // the TTL store: key -> *item, expiring at Entry.Stale

	mu    sync.Mutex
	index map[string]*item // the items in lru
	lru   *list.List       // front = most recently used
	bytes int64

	evictions atomic.Int64
	stop      chan struct{}
	done      chan struct{}
}

// New returns an empty Store and starts its janitor; Close stops it.
func New(opts Options) *Store {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 10000
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 64 << 20
	}
	if opts.JanitorInterval <= 0 {
		opts.JanitorInterval = time.Minute
	}
	s := &Store{
		opts:  opts,
		now:   opts.Now,
		index: map[string]*item{},
		lru:   list.New(),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	if s.now == nil {
		s.now = time.Now
	}
	// No go-cache janitor of its own: it cannot be stopped; ours can.
	s.gc = gocache.New(gocache.NoExpiration, 0)
	s.gc.OnEvicted(s.onExpired)
	go s.janitor()
	return s
}

// Close stops the janitor.
func (s *Store) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return nil
}

func (s *Store) janitor() {
	defer close(s.done)
	t := time.NewTicker(s.opts.JanitorInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.gc.DeleteExpired()
		}
	}
}

// onExpired is go-cache's eviction callback: it runs for expired items the
// janitor drops and for the Deletes of evict, which have already unlinked
// the item.
func (s *Store) onExpired(_ string, v any) {
	it := v.(*item)
	if it.gone.Load() {
		return // evict's own Delete, which runs with mu held
	}
	s.mu.Lock()
	if !it.gone.Load() {
		s.unlink(it)
	}
	s.mu.Unlock()
}

// Get returns the entry of k and whether it is still fresh. A stale entry
// (past its TTL, within its stale window) is returned with fresh false; ok is
// false when there is none. A fresh hit marks the entry referenced, which
// spares it the next eviction that reaches it.
func (s *Store) Get(k Key) (e *Entry, fresh, ok bool) {
	v, found := s.gc.Get(string(k[:]))
	if !found {
		return nil, false, false
	}
	it := v.(*item)
	now := s.now()
	if !now.Before(it.e.Stale) {
		return nil, false, false
	}
	fresh = now.Before(it.e.Fresh)
	if fresh && !it.ref.Load() {
		it.ref.Store(true)
	}
	return it.e, fresh, true
}

// Set stores e under k, replacing any entry, then evicts the least recently
// used entries until both bounds hold. An entry larger than MaxBytes is not
// stored. e.Stale must not be before e.Fresh.
func (s *Store) Set(k Key, e *Entry) {
	it := &item{key: string(k[:]), e: e, size: e.Size()}
	if it.size > s.opts.MaxBytes {
		return
	}
	ttl := e.Stale.Sub(s.now())
	if ttl <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.index[it.key]; old != nil {
		s.unlink(old)
	}
	it.elem = s.lru.PushFront(it)
	s.index[it.key] = it
	s.bytes += it.size
	// go-cache's expiry runs on the real clock; the stale window is its life.
	s.gc.Set(it.key, it, ttl)
	chances := len(s.index) // bounds the loop while hits keep setting bits
	for len(s.index) > s.opts.MaxEntries || s.bytes > s.opts.MaxBytes {
		back := s.lru.Back().Value.(*item)
		if back == it {
			// The others all had their second chance and passed it
			// ahead: the entry being stored is not the one to go.
			s.lru.MoveToFront(back.elem)
			continue
		}
		if back.ref.Load() && chances > 0 {
			chances--
			back.ref.Store(false) // a second chance: one more lap
			s.lru.MoveToFront(back.elem)
			continue
		}
		s.evict(back)
		s.evictions.Add(1)
		if s.opts.OnEvict != nil {
			s.opts.OnEvict()
		}
	}
}

// evict removes it from the index and from go-cache; mu is held.
func (s *Store) evict(it *item) {
	s.unlink(it)
	// go-cache calls onExpired from Delete, after its own lock; it.gone,
	// set by unlink, makes that a no-op, so holding mu here cannot deadlock.
	if v, ok := s.gc.Get(it.key); ok && v.(*item) == it {
		s.gc.Delete(it.key)
	}
}

// unlink drops it from the index and the LRU list; mu is held.
func (s *Store) unlink(it *item) {
	it.gone.Store(true)
	if s.index[it.key] == it {
		delete(s.index, it.key)
	}
	s.lru.Remove(it.elem)
	s.bytes -= it.size
}

// Purge drops the entries of upstream ("" = all) and returns how many.
func (s *Store) Purge(upstream string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, it := range s.index {
		if upstream == "" || it.e.Upstream == upstream {
			s.evict(it)
			n++
		}
	}
	return n
}

// Len returns the number of entries, fresh or stale.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index)
}

// Bytes returns the bytes the entries count against MaxBytes.
func (s *Store) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// Evictions returns how many entries were evicted to stay within the bounds.
func (s *Store) Evictions() int64 { return s.evictions.Load() }
