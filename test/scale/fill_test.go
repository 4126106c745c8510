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
	"time"

	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
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

// batchOps is how many writes go into one atomic commit while filling a
// bbolt store: large enough that the fsync per commit does not dominate.
// An etcd store takes what one transaction allows (etcdBatchOps).
const batchOps = 8192

// etcdBatchOps keeps a batch's writes, and its conditions, under etcd's
// default limit of 128 of each in one transaction (with room for the
// engine's own).
const etcdBatchOps = 100

// Ref names one filler object.
type Ref struct{ Vault, Name string }

// Etcd locates the etcd cluster of a store on the etcd engine.
type Etcd struct {
	Endpoints []string
	Prefix    string
}

// Store is a data directory being filled, and what is in it.
type Store struct {
	Dir string
	// Etcd is set for a store on the etcd engine; the default is bbolt in
	// Dir.
	Etcd *Etcd
	// Vaults is how many vaults the filler goes round.
	Vaults int
	// Env holds the administrator's credentials (its URLs name no port:
	// the server measured sets its own).
	Env devenv.Env
	// Objects are the filler objects, in the order they were written.
	Objects []Ref
	// Versions counts the filler versions (the big object excluded).
	Versions int
	// BigVault and BigName locate the object with BigVersions versions
	// (on etcd, more than one transaction holds: it is written in several).
	BigVault, BigName string

	files                       pki.Files
	tenant, subscription, admin string
}

// VaultName is the name of filler vault i.
func VaultName(i int) string { return fmt.Sprintf("scale-%04d", i) }

// NewStore makes a store: in dir, with the dev server's bootstrap (root key,
// TLS, tenant, administrator), or on etcd (etc not nil) with the same made
// by hand as a first `coffer server` would need; then the given number of
// vaults, the big object and the listed vault's extra objects,
// all in vault 0.
func NewStore(ctx context.Context, dir string, vaults int, etc *Etcd) (*Store, error) {
	s := &Store{Dir: dir, Etcd: etc, Vaults: vaults, BigVault: VaultName(0), BigName: "big"}
	var err error
	if s.files, err = pki.EnsureDev(filepath.Join(dir, "tls"), endpoint.DefaultSuffix, time.Now()); err != nil {
		return nil, err
	}
	if etc != nil {
		if err := rootkey.WriteFile(filepath.Join(dir, "root.key"), rootkey.Generate()); err != nil {
			return nil, err
		}
	}
	err = s.with(ctx, func(ctx context.Context, srv *server.Server) error {
		if etc != nil {
			st, secret, err := bootstrap.Ensure(ctx, srv.Store().Barrier, srv.Authority, srv.Roles)
			if err != nil {
				return err
			}
			t, err := srv.Authority.Tenant(ctx, st.TenantID)
			if err != nil {
				return err
			}
			s.tenant, s.subscription, s.admin = st.TenantID, t.SubscriptionID, st.AdminObjectID
			s.Env = devenv.Env{TenantID: st.TenantID, ClientID: st.AdminAppID, ClientSecret: secret, CAFile: s.files.CACert, DataDir: dir}
		}
		for i := range vaults {
			if _, err := srv.Vaults.Create(ctx, vault.Vault{Name: VaultName(i), TenantID: s.tenant,
				SubscriptionID: s.subscription, CreatedBy: s.admin}); err != nil {
				return fmt.Errorf("create vault %d: %w", i, err)
			}
		}
		coll := srv.Secrets.Collection()
		// On its own: on etcd, it is more than one transaction holds, and
		// Import writes it in several.
		if _, _, err := coll.Import(ctx, s.BigVault, export(s.BigName, BigVersions)); err != nil {
			return fmt.Errorf("import the object of %d versions: %w", BigVersions, err)
		}
		var changes []object.Change
		for i := range ListObjects {
			ch, _, _, err := coll.StageImport(ctx, s.BigVault, export(fmt.Sprintf("l-%02d", i), 1))
			if err != nil {
				return err
			}
			changes = append(changes, ch)
		}
		return object.Apply(ctx, srv.Store().Barrier, changes...)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// with opens the store through the server's assembly (the dev server's, for
// bbolt), runs fn with a context that reads the store's current state, and
// closes it again: the server measured later opens it afresh (a bbolt file
// has room for one process).
func (s *Store) with(ctx context.Context, fn func(context.Context, *server.Server) error) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var srv *server.Server
	if s.Etcd == nil {
		d, err := dev.New(ctx, dev.Options{DataDir: s.Dir, ListenAddress: "127.0.0.1", Port: 0, Server: server.Options{Log: quiet}})
		if err != nil {
			return err
		}
		s.Env = d.Env
		s.tenant, s.subscription, s.admin = d.State.TenantID, d.Subscription, d.State.AdminObjectID
		srv = d.Server
	} else {
		files := s.files
		var err error
		srv, err = server.New(ctx, server.Options{
			StoreOptions: server.StoreOptions{Storage: server.StorageEtcd, Etcd: server.EtcdOptions{Endpoints: s.Etcd.Endpoints, Prefix: s.Etcd.Prefix},
				DataDir: s.Dir, RootKeyFile: filepath.Join(s.Dir, "root.key")},
			Listen: "127.0.0.1:0", DNSSuffix: endpoint.DefaultSuffix, TLSCertFile: files.Cert, TLSKeyFile: files.Key, Log: quiet,
		})
		if err != nil {
			return err
		}
	}
	sctx, err := srv.Store().Barrier.Sync(ctx)
	if err == nil {
		err = fn(sctx, srv)
	}
	if cerr := srv.Close(); err == nil {
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
	limit := batchOps
	if s.Etcd != nil {
		limit = etcdBatchOps
	}
	return s.with(ctx, func(ctx context.Context, srv *server.Server) error {
		coll, st := srv.Secrets.Collection(), srv.Store().Barrier
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
			if ops+max(len(ch.Ops), len(ch.Conds)) > limit {
				if err := flush(); err != nil {
					return err
				}
			}
			batch = append(batch, ch)
			ops += max(len(ch.Ops), len(ch.Conds))
			s.Objects = append(s.Objects, ref)
			s.Versions += n
		}
		if len(batch) > 0 {
			return flush()
		}
		return nil
	})
}

// StoreBytes is the size of the bbolt file (0 on etcd).
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
