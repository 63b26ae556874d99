package sidecar

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strings"
	"sync"

	"github.com/fender-sidecar/fender/store"
)

// keyHasher is a pooled buffer in which a key's parts are laid out before
// one SHA-256 over them: no hash state behind an interface, so nothing
// escapes to the heap per key.
type keyHasher struct {
	buf     []byte
	members []member
}

var hashers = sync.Pool{New: func() any { return &keyHasher{buf: make([]byte, 0, 1024)} }}

// cacheKey is SHA-256 over the upstream, method, path, model, the body with
// JSON object keys sorted at every depth (strings and numbers otherwise kept
// exactly as written), and the values of the vary headers. Each part is
// length-prefixed so that no two requests share a key by concatenation.
func cacheKey(upstream string, req *Request, vary []string) store.Key {
	kh := hashers.Get().(*keyHasher)
	defer hashers.Put(kh)
	b := kh.buf[:0]
	b = appendPart(b, upstream)
	b = appendPart(b, req.Method)
	b = appendPart(b, req.Path)
	b = appendPart(b, req.Model)
	switch {
	case req.Body != nil:
		mark := len(b)
		b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, 'j')
		b = kh.canonical(b, req.Body)
		binary.BigEndian.PutUint64(b[mark:], uint64(len(b)-mark-8))
	case req.BodyText != nil:
		b = binary.BigEndian.AppendUint64(b, uint64(len(*req.BodyText)+1))
		b = append(b, 't')
		b = append(b, *req.BodyText...)
	default:
		b = appendPart(b, "")
	}
	for _, name := range vary {
		b = appendPart(b, strings.ToLower(name))
		value := ""
		for _, h := range req.Headers {
			if strings.EqualFold(h[0], name) {
				value = h[1]
				break
			}
		}
		b = appendPart(b, value)
	}
	kh.buf = b
	return sha256.Sum256(b)
}

func appendPart(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
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
		slices.SortFunc(ms, func(a, b member) int { return bytes.Compare(a.key, b.key) })
		dst = append(dst, '{')
		for i, m := range ms {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendStringBytes(dst, m.key)
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
