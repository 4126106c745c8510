package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/bolt"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// StoreFile is the name of the embedded store inside a data directory.
const StoreFile = "coffer.db"

// Store is an opened, unsealed embedded store.
type Store struct {
	Phys    *bolt.Backend
	Barrier *barrier.Barrier
	// KeySource says where the root key came from, so rotation can persist
	// the next one.
	KeySource rootkey.Source
}

// OpenStore opens dataDir's store and unseals it with the root key from
// rootKeyFile, or from COFFER_ROOT_KEY when rootKeyFile is empty.
func OpenStore(ctx context.Context, dataDir, rootKeyFile string) (*Store, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	phys, err := bolt.Open(filepath.Join(dataDir, StoreFile))
	if err != nil {
		return nil, err
	}
	sealedBy, err := barrier.StoreRootKeyID(ctx, phys)
	if err != nil {
		phys.Close()
		return nil, err
	}
	key, src, err := rootkey.Load(rootKeyFile, sealedBy)
	if err != nil {
		phys.Close()
		return nil, err
	}
	b, err := barrier.Open(ctx, phys, key)
	if err != nil {
		phys.Close()
		return nil, err
	}
	return &Store{Phys: phys, Barrier: b, KeySource: src}, nil
}

// Close closes the store file.
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
