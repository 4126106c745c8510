package provider

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/azparams"
	"github.com/cofferhq/coffer/internal/node/kvclient"
)

func listed(version string, created int64, enabled bool) kvclient.Item {
	return kvclient.Item{ID: "https://demo.vault.invalid/secrets/s/" + version, Attributes: kvclient.Attributes{Enabled: enabled, Created: created}}
}

func TestHistoryOf(t *testing.T) {
	tests := map[string]struct {
		items   []kvclient.Item // as the vault listed them
		current string
		pinned  string
		n       int
		want    []string
		notOK   bool
	}{
		"the current version first, though a vault without order lists it last": {
			items:   []kvclient.Item{listed("a", 100, true), listed("b", 100, true), listed("c", 100, true)},
			current: "c", n: 3,
			want: []string{"c", "a", "b"},
		},
		"ties keep the listing's order": {
			items:   []kvclient.Item{listed("c", 100, true), listed("b", 100, true), listed("a", 100, true)},
			current: "c", n: 3,
			want: []string{"c", "b", "a"},
		},
		"created decides over the listing's order": {
			items:   []kvclient.Item{listed("a", 100, true), listed("c", 102, true), listed("b", 101, true)},
			current: "c", n: 3,
			want: []string{"c", "b", "a"},
		},
		"a current version created since the listing leads": {
			items:   []kvclient.Item{listed("b", 100, true), listed("a", 100, true)},
			current: "c", n: 3,
			want: []string{"c", "b", "a"},
		},
		"a current version refused as disabled: the newest enabled leads": {
			items: []kvclient.Item{listed("c", 100, false), listed("b", 100, true), listed("a", 100, true)},
			n:     3,
			want:  []string{"b", "a"},
		},
		"a listed current version that is disabled is skipped": {
			items:   []kvclient.Item{listed("c", 100, false), listed("b", 100, true), listed("a", 100, true)},
			current: "c", n: 3,
			want: []string{"b", "a"},
		},
		"disabled older versions are skipped": {
			items:   []kvclient.Item{listed("c", 100, true), listed("b", 100, false), listed("a", 100, true)},
			current: "c", n: 3,
			want: []string{"c", "a"},
		},
		"n bounds the history": {
			items:   []kvclient.Item{listed("a", 100, true), listed("b", 100, true), listed("c", 100, true)},
			current: "b", n: 2,
			want: []string{"b", "a"},
		},
		"the current version matches whatever its case": {
			items:   []kvclient.Item{listed("a", 100, true), listed("c", 100, true)},
			current: "C", n: 3,
			want: []string{"C", "a"},
		},
		"a pinned version starts the history": {
			items:   []kvclient.Item{listed("d", 100, true), listed("c", 100, true), listed("b", 100, true), listed("a", 100, true)},
			current: "d", pinned: "b", n: 3,
			want: []string{"b", "a"},
		},
		"a pinned version is never followed by the current one": {
			items:   []kvclient.Item{listed("b", 100, true), listed("d", 100, true), listed("a", 100, true)},
			current: "d", pinned: "b", n: 3,
			want: []string{"b", "a"},
		},
		"pinning the current version": {
			items:   []kvclient.Item{listed("a", 100, true), listed("d", 100, true), listed("c", 100, true)},
			current: "d", pinned: "D", n: 3,
			want: []string{"d", "a", "c"},
		},
		"a pinned version that is disabled": {
			items:   []kvclient.Item{listed("c", 100, true), listed("b", 100, false)},
			current: "c", pinned: "b", n: 3,
			notOK: true,
		},
		"a pinned version that is not listed": {
			items:   []kvclient.Item{listed("c", 100, true)},
			current: "c", pinned: "x", n: 3,
			notOK: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := slices.Clone(tc.items)
			got, ok := historyOf(tc.items, tc.current, tc.pinned, tc.n)
			if ok == tc.notOK || !slices.Equal(got, tc.want) {
				t.Fatalf("historyOf = %q, ok %v; want %q, ok %v", got, ok, tc.want, !tc.notOK)
			}
			if !slices.Equal(tc.items, before) {
				t.Fatal("historyOf reordered its caller's listing")
			}
		})
	}
}

func TestCurrentDisabled(t *testing.T) {
	for label, c := range map[string]struct {
		err  error
		want bool
	}{
		"secret disabled": {&kvclient.Error{Status: 403, Code: "Forbidden", Inner: "SecretDisabled"}, true},
		"key disabled":    {&kvclient.Error{Status: 403, Code: "Forbidden", Inner: "KeyDisabled"}, true},
		"access denied":   {&kvclient.Error{Status: 403, Code: "Forbidden", Inner: "AccessDenied"}, false},
		"not yet valid":   {&kvclient.Error{Status: 403, Code: "Forbidden", Inner: "SecretNotYetValid"}, false},
		"missing":         {&kvclient.Error{Status: 404, Code: "SecretNotFound"}, false},
		"unreachable":     {&kvclient.Error{Message: "refused"}, false},
	} {
		if got := currentDisabled(c.err); got != c.want {
			t.Errorf("%s: currentDisabled = %v, want %v", label, got, c.want)
		}
	}
}

// Against a vault that lists versions by id and gives them one created
// second, as Azure would for a burst of writes, expand still puts the
// current version first, and that entry keeps the read rather than
// reading the version again. A disabled current version (refused with
// SecretDisabled) leaves the newest enabled one first.
func TestExpandReadsTheCurrentVersion(t *testing.T) {
	var mu sync.Mutex
	reads := map[string]int{}
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reads[r.URL.Path]++
		mu.Unlock()
		base := "https://" + r.Host
		switch r.URL.Path {
		case "/secrets/burst/versions", "/secrets/off/versions":
			name := strings.Split(r.URL.Path, "/")[2]
			enabled := map[string]string{"burst": "true", "off": "false"}[name] // off's current is disabled
			w.Write([]byte(`{"value":[` +
				`{"id":"` + base + `/secrets/` + name + `/0a","attributes":{"enabled":true,"created":100}},` +
				`{"id":"` + base + `/secrets/` + name + `/5e","attributes":{"enabled":` + enabled + `,"created":100}},` +
				`{"id":"` + base + `/secrets/` + name + `/c4","attributes":{"enabled":true,"created":100}}],"nextLink":null}`))
		case "/secrets/burst":
			w.Header().Set("ETag", `"5e.1"`)
			w.Write([]byte(`{"value":"newest","id":"` + base + `/secrets/burst/5e"}`))
		case "/secrets/off":
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer vault.Close()
	s, err := New(Config{VaultSuffix: "vault.invalid:1", Vault: &kvclient.Client{HTTP: vault.Client()}, Auth: &authclient.Client{},
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	for name, want := range map[string][]string{"burst": {"5e", "0a", "c4"}, "off": {"0a", "c4"}} {
		m := &azparams.Mount{Objects: []azparams.Object{{Name: name, Type: azparams.TypeSecret, History: 3}}}
		entries, err := s.expand(context.Background(), m, reader{base: vault.URL, token: "token"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var got []string
		for _, e := range entries {
			got = append(got, e.version)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: versions %q, want %q", name, got, want)
		}
		if name == "burst" && (entries[0].got == nil || entries[0].got.Value != "newest" || entries[1].got != nil) {
			t.Fatalf("%s: the current version's entry does not keep its read", name)
		}
		if name == "off" && entries[0].got != nil {
			t.Fatalf("%s: an entry keeps a read that failed", name)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if reads["/secrets/burst"] != 1 || reads["/secrets/off"] != 1 {
		t.Fatalf("reads %v: want each current version read once", reads)
	}
}
