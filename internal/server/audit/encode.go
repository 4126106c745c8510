package audit

import (
	"math"
	"strconv"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/jsonenc"
)

// appendEntry appends e as encoding/json would marshal it, byte for byte
// (TestAppendEntryIsJSON holds it to that), without reflection: every
// request writes one line, on the server's CPUs.
func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, `{"time":`...)
	if e.Time == "" && !e.at.IsZero() {
		// RFC 3339 has nothing JSON escapes.
		b = append(b, '"')
		b = e.at.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	} else {
		b = jsonenc.AppendString(b, e.Time)
	}
	field := func(name, v string) {
		if v != "" {
			b = append(b, ',', '"')
			b = append(b, name...)
			b = append(b, '"', ':')
			b = jsonenc.AppendString(b, v)
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
	b = jsonenc.AppendString(b, e.Operation)
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
	b = jsonenc.AppendString(b, e.Prev)
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
