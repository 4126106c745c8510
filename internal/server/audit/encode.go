package audit

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// appendEntry appends e as encoding/json would marshal it, byte for byte
// (TestAppendEntryIsJSON holds it to that), without reflection: every
// request writes one line, on the server's CPUs.
func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, `{"time":`...)
	b = appendString(b, e.Time)
	field := func(name, v string) {
		if v != "" {
			b = append(b, ',', '"')
			b = append(b, name...)
			b = append(b, '"', ':')
			b = appendString(b, v)
		}
	}
	field("requestId", e.RequestID)
	field("source", e.Source)
	field("tenant", e.Tenant)
	field("principal", e.Principal)
	field("appId", e.AppID)
	field("vault", e.Vault)
	field("object", e.Object)
	field("version", e.Version)
	field("method", e.Method)
	b = append(b, `,"operation":`...)
	b = appendString(b, e.Operation)
	field("decision", e.Decision)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, `,"latencyMs":`...)
	b = appendFloat(b, e.LatencyMs)
	field("event", e.Event)
	if e.Dropped != 0 {
		b = append(b, `,"dropped":`...)
		b = strconv.AppendInt(b, e.Dropped, 10)
	}
	field("detail", e.Detail)
	b = append(b, `,"prev":`...)
	b = appendString(b, e.Prev)
	field("hash", e.Hash)
	return append(b, '}')
}

// appendFloat formats f as encoding/json does.
func appendFloat(b []byte, f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return append(b, '0') // json.Marshal refuses these; latencies are never either
	}
	abs, format := math.Abs(f), byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString quotes s as encoding/json does, HTML-safe escapes included.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
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
			b = append(b, "\uFFFD"...) // as encoding/json writes it: the character, not an escape
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
