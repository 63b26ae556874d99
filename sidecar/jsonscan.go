package sidecar

import (
	"bytes"
	"encoding/json"
	"errors"
)

// The request decoder reads the top level of a request object itself rather
// than through encoding/json's reflection: the line is validated once with
// validJSON (the same answer as encoding/json.Valid, fuzzed against it), then
// each member's raw value is sliced out of the line (which the handler owns)
// without copying. This keeps decoding to a few allocations, and makes keys
// exact and duplicates visible.

// member is one key and its raw value in a JSON object.
type member struct {
	key []byte // unquoted, or the raw literal's content when it has no escapes
	raw []byte
}

// members appends the members of obj, a valid JSON object, to into, in
// order. With checkDup it also returns the first key that appears twice, if
// any: parsers disagree on which of two equal keys wins, so fender refuses
// the object. into must hold no other object's members when checkDup is set.
func members(obj []byte, into []member, checkDup bool) (_ []member, dup []byte) {
	var seen map[string]struct{}
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return into, nil
	}
	i = skipSpace(obj, i+1)
	for i < len(obj) && obj[i] == '"' {
		kEnd := skipString(obj, i)
		key := obj[i+1 : kEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			k, _ := unquote(obj[i:kEnd])
			key = []byte(k)
		}
		i = skipSpace(obj, kEnd)
		i = skipSpace(obj, i+1) // ':'
		vEnd := skipValue(obj, i)
		if checkDup && dup == nil {
			if seen != nil {
				if _, ok := seen[string(key)]; ok {
					dup = key
				}
				seen[string(key)] = struct{}{}
			} else {
				for _, m := range into {
					if bytes.Equal(m.key, key) {
						dup = key
						break
					}
				}
				if len(into) >= 16 { // past a few keys, a set keeps this linear
					seen = make(map[string]struct{}, 2*len(into))
					for _, m := range into {
						seen[string(m.key)] = struct{}{}
					}
					seen[string(key)] = struct{}{}
				}
			}
		}
		into = append(into, member{key, obj[i:vEnd]})
		i = skipSpace(obj, vEnd)
		if i >= len(obj) || obj[i] != ',' {
			break
		}
		i = skipSpace(obj, i+1)
	}
	return into, dup
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at b[i] ('"').
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the valid JSON value that starts at b[i].
func skipValue(b []byte, i int) int {
	depth := 0
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			i = skipString(b, i)
			if depth == 0 {
				return i
			}
			continue
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth == 0 {
				return i // the end of the enclosing value: a scalar ended
			}
			if depth--; depth == 0 {
				return i + 1
			}
		case depth == 0 && (c == ',' || isSpace(c)):
			return i
		}
		i++
	}
	return i
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// unquote decodes a JSON string literal; the common case without escapes
// costs one allocation.
func unquote(lit []byte) (string, error) {
	if len(lit) < 2 || lit[0] != '"' {
		return "", errors.New("not a string")
	}
	body := lit[1 : len(lit)-1]
	if bytes.IndexByte(body, '\\') < 0 {
		return string(body), nil
	}
	var s string
	err := json.Unmarshal(lit, &s)
	return s, err
}

// compactJSON returns v, a valid JSON value, without insignificant space;
// v itself when it has none.
func compactJSON(v []byte) ([]byte, error) {
	if !hasSpace(v) {
		return v, nil
	}
	return appendCompact(make([]byte, 0, len(v)), v), nil
}

// appendCompact appends v, a valid JSON value, without the space outside
// its strings: what encoding/json.Compact writes, without its reflection-free
// but byte-at-a-time scanner.
func appendCompact(dst, v []byte) []byte {
	start := 0 // of the run not yet copied
	for i := 0; i < len(v); {
		switch c := v[i]; {
		case c == '"':
			i = skipString(v, i)
		case isSpace(c):
			dst = append(dst, v[start:i]...)
			for i < len(v) && isSpace(v[i]) {
				i++
			}
			start = i
		default:
			i++
		}
	}
	return append(dst, v[start:]...)
}

// hasSpace reports whether the valid JSON value v has space outside strings.
func hasSpace(v []byte) bool {
	for i := 0; i < len(v); {
		switch c := v[i]; {
		case c == '"':
			i = skipString(v, i)
		case isSpace(c):
			return true
		default:
			i++
		}
	}
	return false
}

// stringMember returns the string value of key in obj, a valid JSON object,
// and whether it is there as a string. The first occurrence wins.
func stringMember(obj []byte, key string) (string, bool) {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return "", false
	}
	i = skipSpace(obj, i+1)
	for i < len(obj) && obj[i] == '"' {
		kEnd := skipString(obj, i)
		lit := obj[i:kEnd]
		i = skipSpace(obj, kEnd)
		i = skipSpace(obj, i+1) // ':'
		vEnd := skipValue(obj, i)
		match := string(lit[1:len(lit)-1]) == key
		if !match && bytes.IndexByte(lit, '\\') >= 0 {
			k, _ := unquote(lit)
			match = k == key
		}
		if match {
			if obj[i] != '"' {
				return "", false
			}
			s, err := unquote(obj[i:vEnd])
			return s, err == nil
		}
		i = skipSpace(obj, vEnd)
		if i >= len(obj) || obj[i] != ',' {
			break
		}
		i = skipSpace(obj, i+1)
	}
	return "", false
}
