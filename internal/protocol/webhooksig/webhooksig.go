// Package webhooksig is how Coffer signs the requests it sends to URLs its
// users run (event deliveries and ACME DNS hooks), so that a receiver can
// tell them from anyone else's:
//
//	Coffer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
//
// The secret is the subscription's (or the hook's). The time is inside the
// MAC, so a receiver that refuses old times (Verify's tolerance) refuses
// replays. More v1= values may follow, comma-separated, while a secret is
// being changed; one valid value suffices.
package webhooksig

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Header is the signature's HTTP header.
const Header = "Coffer-Signature"

// ErrInvalid matches every signature that does not verify.
var ErrInvalid = errors.New("webhook signature does not verify")

func mac(secret []byte, t string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(t + "."))
	m.Write(body)
	return m.Sum(nil)
}

// Sign returns the header value for body, sent at at.
func Sign(secret []byte, at time.Time, body []byte) string {
	t := strconv.FormatInt(at.Unix(), 10)
	return "t=" + t + ",v1=" + hex.EncodeToString(mac(secret, t, body))
}

// Verify checks a header value against body: one v1 value must be the
// MAC, and t must be within tolerance of now (0: any time).
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var t string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			t = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(t, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrInvalid
	}
	if tolerance > 0 && now.Sub(time.Unix(sec, 0)).Abs() > tolerance {
		return ErrInvalid
	}
	want := mac(secret, t, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return ErrInvalid
}
