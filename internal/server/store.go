package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/bolt"
	"github.com/cofferhq/coffer/internal/server/storage/physical/etcd"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/server/storage/transfer"
)

// StoreFile is the name of the embedded store inside a data directory.
const StoreFile = "coffer.db"

// The storage engines.
const (
	StorageBolt = "bolt" // the embedded store: one file, one process
	StorageEtcd = "etcd" // a shared etcd cluster: several replicas
)

// EtcdOptions locate the etcd cluster of the etcd engine.
type EtcdOptions struct {
	// Endpoints are the members' client URLs.
	Endpoints []string
	// CAFile, CertFile and KeyFile are the client TLS.
	CAFile, CertFile, KeyFile string
	// Prefix holds the installation's keys (default /coffer/).
	Prefix string
	// MaxTxnOps and MaxRequestBytes are the cluster's --max-txn-ops and
	// --max-request-bytes (default etcd's defaults): a cluster run with
	// higher limits lets larger objects be written in fewer transactions.
	MaxTxnOps, MaxRequestBytes int
	// ViewBytes bounds the values each replica holds in memory (default
	// etcd.DefaultViewBytes).
	ViewBytes int
}

// StoreOptions say which store to open.
type StoreOptions struct {
	// Storage is the engine, StorageBolt (the default) or StorageEtcd.
	Storage string
	// DataDir holds the bolt engine's file.
	DataDir string
	Etcd    EtcdOptions
	// RootKeyFile holds the root key; empty reads COFFER_ROOT_KEY.
	RootKeyFile string
}

// Validate checks the options that need no I/O.
func (o *StoreOptions) Validate() error {
	switch o.Storage {
	case "", StorageBolt:
		if o.DataDir == "" {
			return daemon.Invalid("DataDir", "is required: the directory of the embedded store")
		}
		if len(o.Etcd.Endpoints) > 0 {
			return daemon.Invalid("EtcdEndpoints", "are only for Storage etcd")
		}
	case StorageEtcd:
		if len(o.Etcd.Endpoints) == 0 {
			return daemon.Invalid("EtcdEndpoints", "are required with Storage etcd: the cluster's client URLs, such as https://etcd-0.etcd:2379")
		}
		if o.Etcd.MaxTxnOps < 0 {
			return daemon.Invalid("EtcdMaxTxnOps", "%d is negative: give the cluster's --max-txn-ops, or 0 for etcd's default of %d", o.Etcd.MaxTxnOps, etcd.DefaultMaxTxnOps)
		}
		if o.Etcd.MaxRequestBytes < 0 {
			return daemon.Invalid("EtcdMaxRequestBytes", "%d is negative: give the cluster's --max-request-bytes, or 0 for etcd's default of %d", o.Etcd.MaxRequestBytes, etcd.DefaultMaxRequestBytes)
		}
		if o.Etcd.ViewBytes < 0 {
			return daemon.Invalid("EtcdViewBytes", "%d is negative: give the bytes of values each replica may hold, or 0 for the default of %d", o.Etcd.ViewBytes, etcd.DefaultViewBytes)
		}
	default:
		return daemon.Invalid("Storage", "%q is not an engine: use bolt (one replica, embedded) or etcd (several replicas)", o.Storage)
	}
	return nil
}

// Store is an opened, unsealed store.
type Store struct {
	Phys    physical.Backend
	Barrier *barrier.Barrier
	// KeySource says where the root key came from, so rotation can persist
	// the next one.
	KeySource rootkey.Source
	// Leader elects the replica that runs singleton jobs.
	Leader physical.Leader
}

// Engine is an opened storage engine, not yet unsealed.
type Engine interface {
	physical.Backend
	physical.Leader
}

// OpenEngine opens the engine o names without unsealing it: the offline
// tools that copy or check sealed blobs start here. reg (if not nil)
// receives the engine's metrics.
func OpenEngine(ctx context.Context, o StoreOptions, reg prometheus.Registerer, log *slog.Logger) (Engine, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	// Each engine is returned only when it opened: a nil *bolt.Backend
	// in the interface would not be a nil Engine.
	if o.Storage == StorageEtcd {
		e, err := etcd.New(ctx, etcd.Options{Endpoints: o.Etcd.Endpoints, CAFile: o.Etcd.CAFile, CertFile: o.Etcd.CertFile,
			KeyFile: o.Etcd.KeyFile, Prefix: o.Etcd.Prefix, MaxTxnOps: o.Etcd.MaxTxnOps, MaxRequestBytes: o.Etcd.MaxRequestBytes,
			ViewBytes: o.Etcd.ViewBytes, Registerer: reg, Log: log})
		if err != nil {
			return nil, err
		}
		return e, nil
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	b, err := bolt.Open(filepath.Join(o.DataDir, StoreFile))
	if err != nil {
		return nil, err
	}
	return b, nil
}

// OpenStore opens the store o names and unseals it with the root key. reg
// (if not nil) receives the engine's metrics. A store that an unfinished
// migration or restore is writing is refused: its content is partial.
func OpenStore(ctx context.Context, o StoreOptions, reg prometheus.Registerer, log *slog.Logger) (*Store, error) {
	phys, err := OpenEngine(ctx, o, reg, log)
	if err != nil {
		return nil, err
	}
	if err := transfer.RefuseUnfinished(ctx, phys); err != nil {
		phys.Close()
		return nil, err
	}
	sealedBy, err := barrier.StoreRootKeyID(ctx, phys)
	if err != nil {
		phys.Close()
		return nil, err
	}
	key, src, err := rootkey.Load(o.RootKeyFile, sealedBy)
	if err != nil {
		phys.Close()
		return nil, err
	}
	b, err := barrier.Open(ctx, phys, key)
	if err != nil {
		phys.Close()
		return nil, err
	}
	if src.Path != "" {
		b.RereadRootKey(src.Candidates)
	}
	return &Store{Phys: phys, Barrier: b, KeySource: src, Leader: phys}, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.Phys.Close() }

// RotateRootKey re-wraps the data keys with a new root key. With a key file,
// the new key is generated here and the file is replaced crash-safely: the
// key is staged beside the file, the store is re-wrapped, then the staged
// file is moved into place (rootkey.Load finishes an interrupted rotation).
// With COFFER_ROOT_KEY, the caller must provide the new key and update the
// variable before the next start.
func (s *Store) RotateRootKey(ctx context.Context, provided *rootkey.Key) (string, error) {
	if s.KeySource.FromEnv() {
		if provided == nil {
			return "", fmt.Errorf("this server reads its root key from %s, so it cannot store a new one: pass the new key (coffer operator rotate-root-key --new-root-key-file FILE), then set %s to it before the next restart", rootkey.EnvVar, rootkey.EnvVar)
		}
		if err := s.Barrier.RotateRootKey(ctx, *provided); err != nil {
			return "", err
		}
		return provided.ID(), nil
	}
	next := rootkey.Generate()
	if provided != nil {
		next = *provided
	}
	if err := s.KeySource.Stage(next); err != nil {
		return "", err
	}
	if err := s.Barrier.RotateRootKey(ctx, next); err != nil {
		return "", err
	}
	if err := s.KeySource.Commit(); err != nil {
		return "", err
	}
	return next.ID(), nil
}
