package storecheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/bolt"
	"github.com/cofferhq/coffer/internal/server/storage/physical/etcd"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/server/storage/transfer"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// fixture is a store a real server wrote, and what the damage cases need
// to know about it.
type fixture struct {
	store physical.Backend // the server's bolt file, closed by the test
	root  rootkey.Key
	// current versions
	plainCur, plainPrev, webCur string
	miAppID, miObjectID         string
	tenant, assignment          string
}

// populate runs a server and gives it something of everything: secrets
// with several versions, deleted and purged ones, keys, certificates (with
// their managed keys and secrets, one of them deleted), a second vault,
// a custom role and an assignment of it, a managed identity.
func populate(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	e := testserver.Start(t, testserver.Options{})
	s := e.Server
	v, err := s.Vaults.Get("demo")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{tenant: e.State.TenantID}
	set := func(name, value string) secret.Secret {
		t.Helper()
		out, err := s.Secrets.Set(ctx, v, name, secret.SetParams{Value: &value})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	set("plain", "one")
	f.plainPrev = set("plain", "two").Version
	f.plainCur = set("plain", "three").Version
	set("gone", "x")
	if _, err := s.Secrets.Delete(ctx, v, "gone"); err != nil {
		t.Fatal(err)
	}
	set("purged", "x")
	s.Secrets.Delete(ctx, v, "purged")
	if err := s.Secrets.Purge(ctx, v, "purged"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Keys.Create(ctx, v, "signer", key.CreateParams{Kty: "EC", Crv: "P-256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Keys.Rotate(ctx, v, "signer"); err != nil {
		t.Fatal(err)
	}
	issue := func(name string) string {
		t.Helper()
		p := &cert.Policy{X509Props: &cert.X509Props{Subject: "CN=" + name}, KeyProps: &cert.KeyProps{Kty: "EC"}}
		if _, err := s.Certs.Create(ctx, v, name, p, nil, nil); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for {
			op, err := s.Certs.GetOperation(ctx, v, name)
			if err != nil {
				t.Fatal(err)
			}
			if op.Status == cert.Completed {
				break
			}
			if op.Status != cert.InProgress || time.Now().After(deadline) {
				t.Fatalf("issuing %s: %s %+v", name, op.Status, op.Error)
			}
			time.Sleep(10 * time.Millisecond)
		}
		c, err := s.Certs.Get(ctx, v, name, "")
		if err != nil {
			t.Fatal(err)
		}
		return c.Version
	}
	issue("web")
	f.webCur = issue("web") // a second version
	issue("old")
	if _, err := s.Certs.Delete(ctx, v, "old"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Vaults.Create(ctx, vault.Vault{Name: "second", TenantID: e.State.TenantID, SubscriptionID: e.Subscription, RBAC: true}); err != nil {
		t.Fatal(err)
	}
	role, err := s.Roles.CreateRole(ctx, f.tenant, rbac.Role{Name: "Reader of secrets", DataActions: []string{"Microsoft.KeyVault/vaults/secrets/getSecret/action"}})
	if err != nil {
		t.Fatal(err)
	}
	mi, err := s.Authority.CreateManagedIdentity(ctx, f.tenant, "rg1", "app-identity")
	if err != nil {
		t.Fatal(err)
	}
	f.miAppID, f.miObjectID = strings.ToLower(mi.AppID), mi.ObjectID
	a, err := s.Roles.Create(ctx, rbac.Assignment{TenantID: f.tenant, RoleID: role.ID, PrincipalID: mi.ObjectID, PrincipalType: "ServicePrincipal",
		Scope: "/subscriptions/" + e.Subscription + "/resourceGroups/default/providers/Microsoft.KeyVault/vaults/second"})
	if err != nil {
		t.Fatal(err)
	}
	f.assignment = a.ID
	e.Stop()
	f.root, err = rootkey.ReadFile(filepath.Join(e.DataDir, "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	f.store, err = bolt.Open(e.StoreFile())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	return f
}

// stores opens fresh stores of each engine holding the fixture's entries,
// copied blob for blob.
type stores struct {
	f       *fixture
	cluster *etcdtest.Cluster
	n       atomic.Int64
}

func (s *stores) clone(t *testing.T, engine string) physical.Backend {
	t.Helper()
	var b physical.Backend
	var err error
	if engine == "etcd" {
		b, err = etcd.New(context.Background(), etcd.Options{Endpoints: s.cluster.Endpoints(), Prefix: fmt.Sprintf("/check%d/", s.n.Add(1))})
	} else {
		b, err = bolt.Open(filepath.Join(t.TempDir(), "coffer.db"))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if _, err := transfer.Copy(context.Background(), transfer.Store{B: s.f.store, Label: "fixture"}, b, transfer.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	return b
}

// want is one problem a case must report: at key, containing text.
type want struct {
	key, text string
}

// damage edits a store at the physical level, as a crash, a bad disk or a
// careless hand would. br seals with the store's own keys.
type damage func(t *testing.T, b physical.Backend, br *barrier.Barrier)

func put(t *testing.T, b physical.Backend, key string, value []byte) {
	t.Helper()
	if err := b.Apply(context.Background(), nil, []physical.Op{{Key: key, Value: value}}); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, b physical.Backend, keys ...string) {
	t.Helper()
	var ops []physical.Op
	for _, k := range keys {
		ops = append(ops, physical.Op{Key: k, Delete: true})
	}
	if err := b.Apply(context.Background(), nil, ops); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, b physical.Backend, key string) []byte {
	t.Helper()
	v, err := b.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return v
}

// under lists the keys under prefix.
func under(t *testing.T, b physical.Backend, prefix string) []string {
	t.Helper()
	es, err := b.Scan(context.Background(), prefix, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Key)
	}
	return out
}

func TestCheck(t *testing.T) {
	f := populate(t)
	st := &stores{f: f, cluster: etcdtest.Start(t, 1)}
	ctx := context.Background()
	secretVer := func(v string) string { return "o/demo/secrets/v/plain/" + v }

	cases := map[string]struct {
		damage damage
		want   []want
	}{
		"aByteFlippedInABlob": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				v := get(t, b, secretVer(f.plainPrev))
				v[len(v)-1] ^= 1
				put(t, b, secretVer(f.plainPrev), v)
			},
			want: []want{{secretVer(f.plainPrev), "does not open"}},
		},
		"aVersionTheHeadNamesDeleted": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) { del(t, b, secretVer(f.plainCur)) },
			want:   []want{{"o/demo/secrets/h/plain", "names current version " + f.plainCur + ", which does not exist"}},
		},
		"thePreviousVersionDeleted": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) { del(t, b, secretVer(f.plainPrev)) },
			want:   []want{{"o/demo/secrets/h/plain", "names previous version " + f.plainPrev}},
		},
		"aBlobMovedToAnotherKey": {
			// The current version's blob moved to a version key of its
			// own: it does not open there, and the head lost its version.
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				blob := get(t, b, secretVer(f.plainCur))
				del(t, b, secretVer(f.plainCur))
				put(t, b, secretVer("00000000000000000000000000000000"), blob)
			},
			want: []want{
				{secretVer("00000000000000000000000000000000"), "does not open"},
				{"o/demo/secrets/h/plain", "names current version"},
			},
		},
		"aBlobCopiedOverAnother": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				put(t, b, secretVer(f.plainPrev), get(t, b, secretVer(f.plainCur)))
			},
			want: []want{{secretVer(f.plainPrev), "does not open"}},
		},
		"aCertificatesManagedKeyGone": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				del(t, b, append(under(t, b, "o/demo/keys/v/web/"), "o/demo/keys/h/web")...)
			},
			want: []want{{"o/demo/certificates/h/web", "has no managed key (o/demo/keys/h/web)"}},
		},
		"aManagedSecretVersionGone": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				del(t, b, "o/demo/secrets/v/web/"+f.webCur)
			},
			want: []want{
				{"o/demo/certificates/v/web/" + f.webCur, "has no managed secret version"},
				{"o/demo/secrets/h/web", "names current version " + f.webCur},
			},
		},
		"aDeletedCertificateWhoseKeyIsLive": {
			// Half of a delete batch: the key's head moved back.
			damage: func(t *testing.T, b physical.Backend, br *barrier.Barrier) {
				rec, err := br.Get(ctx, "o/demo/keys/d/old")
				if err != nil {
					t.Fatal(err)
				}
				del(t, b, "o/demo/keys/d/old")
				put(t, b, "o/demo/keys/h/old", br.Seal("o/demo/keys/h/old", rec.Value))
			},
			want: []want{
				{"o/demo/certificates/d/old", "is deleted, but its managed key is live"},
				{"o/demo/keys/h/old", "is a live head with a deletion date"},
			},
		},
		"anObjectBothLiveAndDeleted": {
			damage: func(t *testing.T, b physical.Backend, br *barrier.Barrier) {
				rec, _ := br.Get(ctx, "o/demo/secrets/d/gone")
				put(t, b, "o/demo/secrets/h/gone", br.Seal("o/demo/secrets/h/gone", rec.Value))
			},
			want: []want{
				{"o/demo/secrets/d/gone", "both live"},
				{"o/demo/secrets/h/gone", "is a live head with a deletion date"},
			},
		},
		"versionsWithoutAHead": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) { del(t, b, "o/demo/secrets/d/gone") },
			want:   []want{{"o/demo/secrets/v/gone/", "which has no head"}},
		},
		"aVaultMissingFromTheRegistry": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) { del(t, b, "vaults/demo") },
			want: []want{
				{"o/demo/", `belongs to vault "demo", which the registry does not hold`},
				{"certops/demo/", `belongs to vault "demo"`},
			},
		},
		"aRoleAssignmentThatDoesNotDecode": {
			damage: func(t *testing.T, b physical.Backend, br *barrier.Barrier) {
				k := "rbac/" + f.tenant + "/" + f.assignment
				put(t, b, k, br.Seal(k, []byte(`{"name": 17}`)))
			},
			want: []want{{"rbac/" + f.tenant + "/" + f.assignment, "does not decode as a role assignment"}},
		},
		"aVaultEntryThatDoesNotDecode": {
			damage: func(t *testing.T, b physical.Backend, br *barrier.Barrier) {
				put(t, b, "vaults/second", br.Seal("vaults/second", []byte(`not json`)))
			},
			want: []want{{"vaults/second", "does not decode as a vault: malformed JSON"}},
		},
		"aPrincipalsIndexGone": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				del(t, b, "authority/objects/"+f.tenant+"/"+f.miObjectID)
			},
			want: []want{{"authority/principals/" + f.tenant + "/" + f.miAppID, "is not indexed"}},
		},
		"aPrincipalGoneButIndexed": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				del(t, b, "authority/principals/"+f.tenant+"/"+f.miAppID)
			},
			want: []want{
				{"authority/objects/" + f.tenant + "/" + f.miObjectID, "which has no principal"},
				{"authority/resources/" + f.tenant + "/", "which has no principal"},
			},
		},
		"theSigningKeysGone": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				del(t, b, under(t, b, "authority/signing/")...)
			},
			want: []want{{"authority/signing/", "no token signing key"}},
		},
		"theKeyringDamaged": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				v := get(t, b, barrier.KeyringKey)
				v[len(v)-1] ^= 1
				put(t, b, barrier.KeyringKey, v)
			},
			want: []want{{barrier.KeyringKey, "does not open"}},
		},
		"anUnfinishedMigration": {
			damage: func(t *testing.T, b physical.Backend, _ *barrier.Barrier) {
				put(t, b, transfer.MarkerKey, []byte(`{"op":"migrate","source":"bolt:/x"}`))
			},
			want: []want{{transfer.MarkerKey, "unfinished migration"}},
		},
	}
	for _, engine := range []string{"bolt", "etcd"} {
		t.Run(engine, func(t *testing.T) {
			t.Run("Clean", func(t *testing.T) {
				b := st.clone(t, engine)
				rep, err := Check(ctx, b, f.root)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range rep.Problems {
					t.Errorf("a store the server wrote has a problem: %s", p)
				}
				for _, kind := range []string{"vaults", "objects", "deleted objects", "object versions", "certificates", "certificate operations",
					"role assignments", "custom roles", "tenants", "principals", "principal indexes", "signing keys"} {
					if rep.Counts[kind] == 0 {
						t.Errorf("the fixture has no %s to check", kind)
					}
				}
				if rep.Opened != rep.Entries || rep.RootKeyID != f.root.ID() {
					t.Errorf("report: %d of %d entries opened, root key %s", rep.Opened, rep.Entries, rep.RootKeyID)
				}
				t.Logf("%d entries, counts %v", rep.Entries, rep.Counts)
			})
			for name, tc := range cases {
				t.Run(name, func(t *testing.T) {
					b := st.clone(t, engine)
					br, err := barrier.Open(ctx, b, f.root)
					if err != nil {
						t.Fatal(err)
					}
					tc.damage(t, b, br)
					rep, err := Check(ctx, b, f.root)
					if err != nil {
						t.Fatal(err)
					}
					if !rep.Damaged() {
						t.Fatalf("no damage found; problems: %v", rep.Problems)
					}
					for _, w := range tc.want {
						if !found(rep, w) {
							t.Errorf("missing: damage at %s containing %q", w.key, w.text)
						}
					}
					for _, p := range rep.Problems {
						if p.Severity == Damage && !expected(tc.want, p) {
							t.Errorf("unexpected: %s", p)
						}
					}
					if t.Failed() {
						for _, p := range rep.Problems {
							t.Log(p)
						}
					}
				})
			}
		})
	}

	t.Run("Refuses", func(t *testing.T) {
		b := st.clone(t, "bolt")
		var mm *barrier.RootKeyMismatchError
		if _, err := Check(ctx, b, rootkey.Generate()); !errors.As(err, &mm) {
			t.Fatalf("Check with another root key = %v, want a *RootKeyMismatchError", err)
		}
		empty, err := bolt.Open(filepath.Join(t.TempDir(), "empty.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer empty.Close()
		if _, err := Check(ctx, empty, f.root); !errors.Is(err, ErrEmpty) {
			t.Fatalf("Check of an empty store = %v, want ErrEmpty", err)
		}
	})

	// A certificate purge cut off between its batches: the three marked
	// as being purged, the managed key already gone. That is no damage:
	// the next purge finishes it.
	t.Run("APurgeCutOffMidwayIsNotDamage", func(t *testing.T) {
		b := st.clone(t, "bolt")
		br, _ := barrier.Open(ctx, b, f.root)
		for _, k := range []string{"o/demo/certificates/d/old", "o/demo/keys/d/old", "o/demo/secrets/d/old"} {
			rec, err := br.Get(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			var h object.Head
			if err := json.Unmarshal(rec.Value, &h); err != nil {
				t.Fatal(err)
			}
			h.Purging = object.NewVersionID()
			raw, _ := json.Marshal(h)
			put(t, b, k, br.Seal(k, raw))
		}
		del(t, b, append(under(t, b, "o/demo/keys/v/old/"), "o/demo/keys/d/old")...)
		rep, err := Check(ctx, b, f.root)
		if err != nil || rep.Damaged() || rep.Counts["objects being purged"] != 2 {
			t.Fatalf("Check = %v (%d objects being purged), %v", rep.Problems, rep.Counts["objects being purged"], err)
		}
	})

	// A key no component owns is worth a notice, not an alarm.
	t.Run("AnUnknownKeyIsANotice", func(t *testing.T) {
		b := st.clone(t, "bolt")
		br, _ := barrier.Open(ctx, b, f.root)
		put(t, b, "future/feature", br.Seal("future/feature", []byte("{}")))
		rep, err := Check(ctx, b, f.root)
		if err != nil || rep.Damaged() || len(rep.Problems) != 1 || rep.Problems[0].Severity != Notice {
			t.Fatalf("Check = %v, %v", rep.Problems, err)
		}
	})
}

// found reports whether rep holds damage at w.key (or under it, for a key
// ending in /) with w.text.
func found(rep Report, w want) bool {
	for _, p := range rep.Problems {
		if p.Severity == Damage && matches(w, p) {
			return true
		}
	}
	return false
}

func expected(ws []want, p Problem) bool {
	for _, w := range ws {
		if matches(w, p) {
			return true
		}
	}
	return false
}

func matches(w want, p Problem) bool {
	keyOK := p.Key == w.key || strings.HasSuffix(w.key, "/") && strings.HasPrefix(p.Key, w.key)
	return keyOK && strings.Contains(p.Problem, w.text)
}
