package sidecar

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"sort"
	"strings"
	"sync"

	"github.com/fender-sidecar/fender/store"
)

// keyHasher is a pooled SHA-256 state with a scratch buffer.
type keyHasher struct {
	h       hash.Hash
	scratch []byte
	members []member
}

var hashers = sync.Pool{New: func() any { return &keyHasher{h: sha256.New()} }}

// cacheKey is SHA-256 over the upstream, method, path, model, the body with
// JSON object keys sorted at every depth (strings and numbers otherwise kept
// exactly as written), and the values of the vary headers. Each part is
// length-prefixed so that no two requests share a key by concatenation.
func cacheKey(upstream string, req *Request, vary []string) store.Key {
	kh := hashers.Get().(*keyHasher)
	defer hashers.Put(kh)
	kh.h.Reset()
	kh.part([]byte(upstream))
	kh.part([]byte(req.Method))
	kh.part([]byte(req.Path))
	kh.part([]byte(req.Model))
	switch {
	case req.Body != nil:
		kh.scratch = append(kh.scratch[:0], 'j')
		kh.scratch = kh.canonical(kh.scratch, req.Body)
		kh.part(kh.scratch)
	case req.BodyText != nil:
		kh.scratch = append(kh.scratch[:0], 't')
		kh.scratch = append(kh.scratch, *req.BodyText...)
		kh.part(kh.scratch)
	default:
		kh.part(nil)
	}
	for _, name := range vary {
		kh.part([]byte(strings.ToLower(name)))
		found := false
		for _, h := range req.Headers {
			if strings.EqualFold(h[0], name) {
				kh.part([]byte(h[1]))
				found = true
				break
			}
		}
		if !found {
			kh.part(nil)
		}
	}
	var k store.Key
	kh.h.Sum(k[:0])
	return k
}

func (kh *keyHasher) part(b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	kh.h.Write(n[:])
	kh.h.Write(b)
}

// canonical appends v, a valid compact JSON value, with object keys sorted
// at every depth and strings in one escaping, so that equal JSON values with
// keys in another order or other escapes give the same bytes.
func (kh *keyHasher) canonical(dst, v []byte) []byte {
	switch v[0] {
	case '{':
		start := len(kh.members)
		kh.members, _ = members(v, kh.members, false)
		ms := kh.members[start:]
		sort.Slice(ms, func(i, j int) bool { return bytes.Compare(ms[i].key, ms[j].key) < 0 })
		dst = append(dst, '{')
		for i, m := range ms {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, string(m.key))
			dst = append(dst, ':')
			dst = kh.canonical(dst, m.raw)
		}
		kh.members = kh.members[:start]
		return append(dst, '}')
	case '[':
		dst = append(dst, '[')
		i := 1
		for first := true; i < len(v) && v[i] != ']'; first = false {
			if !first {
				i++ // ','
			}
			end := skipValue(v, i)
			if !first {
				dst = append(dst, ',')
			}
			dst = kh.canonical(dst, v[i:end])
			i = end
		}
		return append(dst, ']')
	case '"':
		if bytes.IndexByte(v, '\\') < 0 {
			return append(dst, v...)
		}
		s, _ := unquote(v)
		return appendString(dst, s)
	}
	return append(dst, v...) // numbers, true, false, null: exactly as written
}
