package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// snapshotMagic starts every snapshot file; the version is part of it.
const snapshotMagic = "fender-cache-snapshot/1\n"

// ErrCorrupt is returned by Load for a snapshot that is truncated, altered or
// not a snapshot at all.
var ErrCorrupt = errors.New("cache snapshot is corrupt")

type snapEntry struct {
	Key   []byte
	Entry Entry
}

// Save writes every entry that is not yet past its stale window to path,
// atomically: a temporary file in the same directory, synced, then renamed
// over path. It returns how many entries it wrote.
func (s *Store) Save(path string) (int, error) {
	now := s.now()
	s.mu.Lock()
	entries := make([]snapEntry, 0, len(s.index))
	// Least recently used first, so that Load replays the LRU order.
	for el := s.lru.Back(); el != nil; el = el.Prev() {
		it := el.Value.(*item)
		if now.Before(it.e.Stale) {
			entries = append(entries, snapEntry{Key: []byte(it.key), Entry: *it.e})
		}
	}
	s.mu.Unlock()

	var body bytes.Buffer
	if err := gob.NewEncoder(&body).Encode(entries); err != nil {
		return 0, fmt.Errorf("encode cache snapshot: %w", err)
	}
	sum := sha256.Sum256(body.Bytes())
	tmp, err := os.CreateTemp(filepath.Dir(path), ".fender-snapshot-*")
	if err != nil {
		return 0, fmt.Errorf("write cache snapshot: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	_, err = tmp.WriteString(snapshotMagic)
	if err == nil {
		_, err = tmp.Write(sum[:])
	}
	if err == nil {
		_, err = tmp.Write(body.Bytes())
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return 0, fmt.Errorf("write cache snapshot: %w", err)
	}
	return len(entries), nil
}

// Load reads a snapshot written by Save and stores its entries that are not
// yet past their stale window, keeping their remaining TTLs. It loads all or
// nothing: a file that is truncated, altered or not a snapshot is ErrCorrupt
// and changes nothing. A missing file is an error satisfying os.ErrNotExist.
func (s *Store) Load(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// A snapshot holds at most MaxBytes of entries, plus encoding overhead.
	limit := 2*s.opts.MaxBytes + int64(len(snapshotMagic)) + sha256.Size + 1<<20
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return 0, fmt.Errorf("read cache snapshot: %w", err)
	}
	if int64(len(data)) > limit {
		return 0, fmt.Errorf("%w: larger than the cache bounds allow", ErrCorrupt)
	}
	if !bytes.HasPrefix(data, []byte(snapshotMagic)) || len(data) < len(snapshotMagic)+sha256.Size {
		return 0, fmt.Errorf("%w: not a fender cache snapshot", ErrCorrupt)
	}
	data = data[len(snapshotMagic):]
	sum, body := data[:sha256.Size], data[sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return 0, fmt.Errorf("%w: checksum mismatch (truncated or altered)", ErrCorrupt)
	}
	var entries []snapEntry
	if err := gob.NewDecoder(bytes.NewReader(body)).Decode(&entries); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	now := s.now()
	n := 0
	for i := range entries {
		se := &entries[i]
		if len(se.Key) != len(Key{}) || !now.Before(se.Entry.Stale) || se.Entry.Fresh.After(se.Entry.Stale) {
			continue
		}
		var k Key
		copy(k[:], se.Key)
		e := se.Entry
		s.Set(k, &e)
		n++
	}
	return n, nil
}
