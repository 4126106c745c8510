package secret

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
	"github.com/cofferhq/coffer/internal/testing/fuzzstore"
)

const fzTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzRestorePlaintext", func(t *testing.T) []fuzzseed.Seed {
		_, b := fuzzstore.Open(t)
		s := New(b, b, nil)
		v := &vault.Vault{Name: "demo", TenantID: fzTenant, RetentionDays: 7}
		ctx := context.Background()
		for _, val := range []string{"first-version-value", "second-version-value"} {
			val := val
			if _, err := s.Set(ctx, v, "db-password", SetParams{Value: &val, Tags: map[string]string{"env": "prod"}}); err != nil {
				t.Fatal(err)
			}
		}
		blob, err := s.Backup(ctx, v, "db-password")
		if err != nil {
			t.Fatal(err)
		}
		plain, err := b.Unseal(backupPurpose, blob)
		if err != nil {
			t.Fatal(err)
		}
		var bk object.Backup
		json.Unmarshal(plain, &bk)
		var e object.Export[Data]
		json.Unmarshal(bk.Objects[Collection], &e)
		with := func(f func(*object.Backup, *object.Export[Data])) string {
			b2, e2 := bk, e
			e2.Versions = append([]object.Version[Data](nil), e.Versions...)
			f(&b2, &e2)
			b2.Objects = map[string]json.RawMessage{Collection: object.ExportJSON(e2)}
			out, _ := json.Marshal(b2)
			return string(out)
		}
		return []fuzzseed.Seed{
			fuzzseed.S("genuine", string(plain)),
			fuzzseed.S("other-tenant", with(func(b *object.Backup, _ *object.Export[Data]) { b.TenantID = "f8cdef31-a31e-4b4a-93e4-5f571e91255a" })),
			fuzzseed.S("key-kind", with(func(_ *object.Backup, e *object.Export[Data]) { e.Kind = "keys" })),
			fuzzseed.S("bad-name", with(func(_ *object.Backup, e *object.Export[Data]) { e.Head.Name = "../x" })),
			fuzzseed.S("no-current", with(func(_ *object.Backup, e *object.Export[Data]) { e.Head.Current = "00000000000000000000000000000000" })),
			fuzzseed.S("version-with-slash", with(func(_ *object.Backup, e *object.Export[Data]) { e.Versions[0].ID = "a/b" })),
			fuzzseed.S("version-empty", with(func(_ *object.Backup, e *object.Export[Data]) { e.Versions[0].ID = ""; e.Head.Current = "" })),
			fuzzseed.S("version-other-name", with(func(_ *object.Backup, e *object.Export[Data]) { e.Versions[0].Name = "other" })),
			fuzzseed.S("no-versions", with(func(_ *object.Backup, e *object.Export[Data]) { e.Versions = nil })),
			fuzzseed.S("oversized-value", with(func(_ *object.Backup, e *object.Export[Data]) {
				e.Versions[0].Data.Value = string(make([]byte, 30<<10))
			})),
			fuzzseed.S("not-json", "{"),
		}
	})
}

// FuzzRestorePlaintext seals arbitrary backup plaintexts, as if this
// installation had made them, and restores them: the blob's inside is
// trusted no further than the request body. A refusal is the object
// layer's error (never an untyped one, which the API would answer with
// a 500); a restored secret has a valid name, and every version it got is
// a valid version of that name that reads back.
func FuzzRestorePlaintext(f *testing.F) {
	_, b := fuzzstore.Open(f)
	s := New(b, b, nil)
	v := &vault.Vault{Name: "demo", TenantID: fzTenant, RetentionDays: 7}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, plain string) {
		got, err := s.Restore(ctx, v, b.Seal(backupPurpose, []byte(plain)))
		if err != nil {
			var oe *object.Error
			if !errors.As(err, &oe) {
				t.Fatalf("refusal %v is not an object error", err)
			}
			return
		}
		defer func() { s.Delete(ctx, v, got.Name); s.Purge(ctx, v, got.Name) }()
		if !object.ValidName(got.Name) || !object.ValidVersion(got.Version) {
			t.Fatalf("restored %q version %q", got.Name, got.Version)
		}
		vers, _, err := s.ListVersions(ctx, v, got.Name, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, ver := range vers {
			if !object.ValidVersion(ver.Version) || ver.Name != got.Name {
				t.Fatalf("restored version %q of %q into %q", ver.Version, ver.Name, got.Name)
			}
			if _, err := s.Get(ctx, v, got.Name, ver.Version, ""); err != nil {
				var oe *object.Error
				if !errors.As(err, &oe) || !errors.Is(err, object.ErrForbidden) { // a disabled or expired version
					t.Fatalf("restored version %s does not read back: %v", ver.Version, err)
				}
			}
		}
	})
}
