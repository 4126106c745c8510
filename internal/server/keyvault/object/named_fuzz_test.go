package object

import (
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/changes"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzValidators", func(*testing.T) []fuzzseed.Seed {
		return []fuzzseed.Seed{
			fuzzseed.S("name", "db-password"),
			fuzzseed.S("version", "3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8"),
			fuzzseed.S("upper-version", "3F2A9C1D8E7B4A60B1C2D3E4F5A6B7C8"),
			fuzzseed.S("longest-name", strings.Repeat("a", 127)),
			fuzzseed.S("too-long-name", strings.Repeat("a", 128)),
			fuzzseed.S("unicode", "cl\u00e9"),
			fuzzseed.S("empty", ""),
		}
	})
	fuzzseed.Corpus(t, "FuzzNamed", func(*testing.T) []fuzzseed.Seed {
		const ver = "3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8"
		return []fuzzseed.Seed{
			fuzzseed.S("head", "o/demo/secrets/h/db-password", "demo", "db-password", ver),
			fuzzseed.S("version", "o/demo/secrets/v/db-password/"+ver, "demo", "DB-Password", ver),
			fuzzseed.S("deleted", "o/prod-eu/keys/d/signing-key", "prod-eu", "signing-key", ""),
			fuzzseed.S("certificate", "o/demo/certificates/v/web-tls/"+ver, "demo", "web-tls", strings.ToUpper(ver)),
			fuzzseed.S("vault-record", "vaults/demo", "demo", "x", ver),
			fuzzseed.S("pending-op", "certops/demo/web-tls", "demo", "web-tls", ""),
			fuzzseed.S("keyring", "core/keyring", "Demo", "a", ver),
			fuzzseed.S("unknown-sub", "o/demo/secrets/x/db-password", "demo", "a-b-c", ""),
			fuzzseed.S("empty-parts", "o//secrets/h/", "", "", ""),
			fuzzseed.S("no-name", "o/demo/secrets/v/", "demo", "0", ""),
			fuzzseed.S("slashes", "o/demo/secrets/h/a/b/c/d", "demo/x", "a", ver),
			fuzzseed.S("long-name", "o/demo/secrets/h/"+strings.Repeat("n", 127), "demo", strings.Repeat("N", 127), ver),
		}
	})
}

// FuzzNamed checks the parser of store keys that wakes held reads. Any key
// it accepts is an object key made of exactly the parts it returns; every
// key a collection makes for an object (head, version, deleted record)
// names that object, under the subject a held read of it watches.
func FuzzNamed(f *testing.F) {
	f.Fuzz(func(t *testing.T, key, vault, name, version string) {
		if v, kind, n, ok := Named(key); ok {
			for _, part := range []string{v, kind, n} {
				if part == "" || strings.Contains(part, "/") {
					t.Fatalf("Named(%q) = %q %q %q: a part is empty or has a slash", key, v, kind, n)
				}
			}
			base := "o/" + v + "/" + kind + "/"
			rest, found := strings.CutPrefix(key, base)
			if !found {
				t.Fatalf("Named(%q) = %q %q %q, but the key does not start with %q", key, v, kind, n, base)
			}
			sub, tail, _ := strings.Cut(rest, "/")
			if sub != "h" && sub != "v" && sub != "d" {
				t.Fatalf("Named(%q) accepted record kind %q", key, sub)
			}
			if tail != n && !strings.HasPrefix(tail, n+"/") {
				t.Fatalf("Named(%q) = name %q, but the key goes on with %q", key, n, tail)
			}
		}
		// The keys of a real object: a vault name (no slash) and a valid
		// object name and version.
		if vault == "" || strings.Contains(vault, "/") || !ValidName(name) || !ValidVersion(version) {
			return
		}
		for _, kind := range []string{"secrets", "keys", "certificates"} {
			c := New[struct{}](nil, kind, nil)
			for _, k := range []string{c.headKey(vault, name), c.deletedKey(vault, name), c.versionKey(vault, name, version)} {
				v, gotKind, n, ok := Named(k)
				if !ok || v != vault || gotKind != kind || !strings.EqualFold(n, name) {
					t.Fatalf("Named(%q) = %q %q %q %v; want %q %q %q", k, v, gotKind, n, ok, vault, kind, name)
				}
				if changes.Subject(v, gotKind, n) != changes.Subject(vault, kind, name) {
					t.Fatalf("a write to %q wakes %q, not the held reads of %q", k, changes.Subject(v, gotKind, n), changes.Subject(vault, kind, name))
				}
			}
		}
	})
}
