// Package jsonenc appends JSON values to byte slices exactly as
// encoding/json writes them, for the few hot paths (audit entries, the
// secret read's response) where reflection-based encoding costs more than
// the work around it. Tests compare every encoder with json.Marshal.
package jsonenc

import (
	"encoding/binary"
	"encoding/json"
	"unicode/utf8"
	"unsafe"
)

const hexDigits = "0123456789abcdef"

// invalid is what encoding/json writes for a byte that is not UTF-8, as the
// toolchain's encoding/json does it: Go 1.26's writes the escape \ufffd,
// Go 1.27's the character U+FFFD itself. go.mod allows either, and the
// encoders here must match json.Marshal under both.
var invalid = func() string {
	b, _ := json.Marshal("\xff") // a string always marshals
	return string(b[1 : len(b)-1])
}()

// plain marks the ASCII bytes written as they are: one lookup per byte,
// where six comparisons were, on every string of every response.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// Bytes repeated in every byte of a word, for plainWord.
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// plainWord reports whether all of the first eight bytes of s (it must
// have eight) are ones the plain table marks, testing them as one word:
// most strings on the hot paths (ids, URLs, values) need no escape, and a
// lookup per byte was most of an audit line's encoding (74 ns for a
// 91-byte URL, 43 ns this way). Each test, (v - ones) &^ v & highs for a
// zero byte among others, is exact for "some byte is", which is all that
// is asked; '"' and '&', and '<' and '>', differ in one bit, masked off
// to test each pair at once.
func plainWord(s string) bool {
	x := binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s), 8))
	q := (x ^ '"'*ones) & (0xfb * ones)
	a := (x ^ '<'*ones) & (0xfd * ones)
	e := x ^ '\\'*ones
	bad := x | // not ASCII
		(x-0x20*ones)&^x | // a control character
		(q-ones)&^q | (a-ones)&^a | (e-ones)&^e
	return bad&highs == 0
}

// AppendString appends s quoted as encoding/json quotes it, its HTML-safe
// escapes included, so that hand-written encoders on hot paths produce the
// same bytes as json.Marshal.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if i+8 <= len(s) && plainWord(s[i:i+8]) {
			i += 8
			continue
		}
		if c := s[i]; c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, invalid...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Appender is a value that appends its own JSON encoding, byte-identical
// to json.Marshal's, to b.
type Appender interface {
	AppendJSON(b []byte) []byte
}
