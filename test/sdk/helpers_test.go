package sdk

import (
	"context"
	"encoding/base64"
	"testing"

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
