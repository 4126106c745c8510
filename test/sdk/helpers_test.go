package sdk

import (
	"bytes"
	"context"
	"encoding/base64"
	"testing"

	"github.com/cofferhq/coffer/internal/testing/testserver"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

func base64RawURL(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

// collect walks every page of a pager and returns what each page's items
// map to, with the number of pages.
func collect[P any](t *testing.T, p *runtime.Pager[P], items func(P) []string) ([]string, int) {
	t.Helper()
	var out []string
	pages := 0
	for ; p.More(); pages++ {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, items(page)...)
	}
	return out, pages
}

// each maps a page's items with f.
func each[T any](items []*T, f func(*T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = f(it)
	}
	return out
}

// inStore reports whether secret is in the server's store file in any form
// it could be stored in: raw, or base64 (JWK fields are base64url, PFX
// secrets base64, PEM bodies base64 in lines of 64).
func inStore(t *testing.T, env *testserver.Env, secret []byte) bool {
	t.Helper()
	store := env.ReadStore(t)
	probe := secret
	if len(probe) > 48 {
		probe = probe[:48] // base64 of a 48-byte prefix fits in one PEM line
	}
	for _, form := range [][]byte{secret, []byte(base64.RawURLEncoding.EncodeToString(probe)), []byte(base64.StdEncoding.EncodeToString(probe))} {
		if bytes.Contains(store, form) {
			return true
		}
	}
	return false
}
