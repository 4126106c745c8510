package csidriver

import (
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func TestTokensExpire(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tokens := func(exp string) string {
		return `{"api://AzureADTokenExchange":{"token":"t","expirationTimestamp":"` + exp + `"}}`
	}
	for name, c := range map[string]struct {
		secrets, context map[string]string
		want             bool
	}{
		"no tokens":                       {want: false},
		"valid, in secrets":               {secrets: map[string]string{ctxSATokens: tokens("2026-12-01T13:00:00Z")}, want: false},
		"expired, in secrets":             {secrets: map[string]string{ctxSATokens: tokens("2026-12-01T11:59:00Z")}, want: true},
		"expired, in volume context":      {context: map[string]string{ctxSATokens: tokens("2026-12-01T11:59:00Z")}, want: true},
		"secrets win over the context":    {secrets: map[string]string{ctxSATokens: tokens("2026-12-01T13:00:00Z")}, context: map[string]string{ctxSATokens: tokens("2026-12-01T11:00:00Z")}, want: false},
		"unreadable: the provider judges": {secrets: map[string]string{ctxSATokens: "not json"}, want: false},
		"no expiry given":                 {secrets: map[string]string{ctxSATokens: `{"a":{"token":"t"}}`}, want: false},
		"one of two expired":              {secrets: map[string]string{ctxSATokens: `{"a":{"token":"t","expirationTimestamp":"2026-12-01T13:00:00Z"},"b":{"token":"t","expirationTimestamp":"2026-12-01T11:00:00Z"}}`}, want: true},
	} {
		p := newPublication(&csi.NodePublishVolumeRequest{Secrets: c.secrets, VolumeContext: c.context})
		if got := tokensExpire(p, now); got != c.want {
			t.Errorf("%s: tokensExpire = %v, want %v", name, got, c.want)
		}
	}
}
