// Package scale measures what a Coffer server costs as its store grows: the
// cost curves of `make bench-scale`. The store is filled through the same
// storage code the server writes with (the object collections' import path
// over the barrier, in large batches), not through millions of HTTPS
// requests; the server under measurement is then a separate process on
// that store.
package scale

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// Vaults is how many vaults make bench-scale spreads the versions across.
const Vaults = 1000

// BigVersions is the number of versions of the one object that is backed up
// and restored at every size: Key Vault's limit for a backup.
const BigVersions = 500

// ListObjects is how many single-version objects the listed vault gets
// besides its filler, so that the list page measured is a full page of 25
// at every size.
const ListObjects = 30

// maxVersionsPerObject caps how many versions each filler object gets, so
// that a large store is many objects, not a few deep ones.
const maxVersionsPerObject = 10

// batchOps is how many writes go into one atomic commit while filling: large
// enough that the fsync per commit does not dominate, small enough for any
// engine's transaction.
const batchOps = 8192

// Ref names one filler object.
type Ref struct{ Vault, Name string }

// Store is a data directory being filled, and what is in it.
type Store struct {
	Dir string
	// Vaults is how many vaults the filler goes round.
	Vaults int
	// Env holds the administrator's credentials (its URLs name the port
	// of the filler, not of the server measured later).
	Env devenv.Env
	// Objects are the filler objects, in the order they were written.
	Objects []Ref
	// Versions counts the filler versions (the big object excluded).
	Versions int
	// BigVault and BigName locate the object with BigVersions versions.
	BigVault, BigName string
}

// VaultName is the name of filler vault i.
func VaultName(i int) string { return fmt.Sprintf("scale-%04d", i) }

// NewStore makes a data directory with the dev server's bootstrap (root key,
// TLS, tenant, administrator), the given number of vaults, the big object and the listed
// vault's extra objects, all in vault 0.
func NewStore(ctx context.Context, dir string, vaults int) (*Store, error) {
	s := &Store{Dir: dir, Vaults: vaults, BigVault: VaultName(0), BigName: "big"}
	err := s.with(ctx, func(d *dev.Dev) error {
		for i := range vaults {
			if _, err := d.Vaults.Create(ctx, vault.Vault{Name: VaultName(i), TenantID: d.State.TenantID,
				SubscriptionID: d.Subscription, CreatedBy: d.State.AdminObjectID}); err != nil {
				return fmt.Errorf("create vault %d: %w", i, err)
			}
		}
		coll := d.Secrets.Collection()
		ch, _, _, err := coll.StageImport(ctx, s.BigVault, export(s.BigName, BigVersions))
		if err != nil {
			return err
		}
		changes := []object.Change{ch}
		for i := range ListObjects {
			ch, _, _, err := coll.StageImport(ctx, s.BigVault, export(fmt.Sprintf("l-%02d", i), 1))
			if err != nil {
				return err
			}
			changes = append(changes, ch)
		}
		return object.Apply(ctx, d.Store().Barrier, changes...)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// with opens the store through the dev server's assembly, runs fn and
// closes it again: the server measured later needs the file to itself.
func (s *Store) with(ctx context.Context, fn func(*dev.Dev) error) error {
	d, err := dev.New(ctx, dev.Options{DataDir: s.Dir, ListenAddress: "127.0.0.1", Port: 0,
		Server: server.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}})
	if err != nil {
		return err
	}
	s.Env = d.Env
	err = fn(d)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Fill adds filler objects until the store holds target versions. Each new
// object gets (target-now)/s.Vaults versions, between 1 and
// maxVersionsPerObject, and the objects go round the vaults in turn: with
// 1,000 vaults, 10^3 versions are one per vault, and 10^6 are 100 objects of
// 10 versions in each.
func (s *Store) Fill(ctx context.Context, target int) error {
	if s.Versions >= target {
		return nil
	}
	return s.with(ctx, func(d *dev.Dev) error {
		coll, st := d.Secrets.Collection(), d.Store().Barrier
		per := min(max((target-s.Versions)/s.Vaults, 1), maxVersionsPerObject)
		var batch []object.Change
		ops := 0
		flush := func() error {
			err := object.Apply(ctx, st, batch...)
			batch, ops = batch[:0], 0
			return err
		}
		for s.Versions < target {
			n := min(per, target-s.Versions)
			k := len(s.Objects)
			ref := Ref{Vault: VaultName(k % s.Vaults), Name: fmt.Sprintf("s-%06d", k/s.Vaults)}
			ch, _, _, err := coll.StageImport(ctx, ref.Vault, export(ref.Name, n))
			if err != nil {
				return fmt.Errorf("stage %s/%s: %w", ref.Vault, ref.Name, err)
			}
			batch = append(batch, ch)
			ops += len(ch.Ops)
			s.Objects = append(s.Objects, ref)
			s.Versions += n
			if ops >= batchOps {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if len(batch) > 0 {
			return flush()
		}
		return nil
	})
}

// StoreBytes is the size of the bbolt file.
func (s *Store) StoreBytes() int64 {
	fi, err := os.Stat(filepath.Join(s.Dir, server.StoreFile))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// export is an object of n versions with 64-byte values, as a backup holds
// it, with the newest version current.
func export(name string, n int) object.Export[secret.Data] {
	e := object.Export[secret.Data]{Kind: secret.Collection, Head: object.Head{Name: name, Seq: uint64(n)}}
	value := strings.Repeat("v", 64)
	for i := range n {
		id := object.NewVersionID()
		e.Versions = append(e.Versions, object.Version[secret.Data]{Name: name, ID: id, Order: uint64(i + 1),
			Attributes: object.Attributes{Enabled: true, Created: 1_700_000_000 + int64(i), Updated: 1_700_000_000 + int64(i)},
			Data:       secret.Data{Value: value}})
		e.Head.Previous, e.Head.Current = e.Head.Current, id
	}
	return e
}
