//go:build !node

package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/server/storage/transfer"
	"github.com/cofferhq/coffer/internal/server/storecheck"
)

// The offline store tools: migrate, snapshot save|restore, verify. Each is
// flags -> store options -> a library call (transfer, storecheck) -> a
// report on stdout.

func (a *app) migrateCmd() *cobra.Command {
	var from, to, keyFile string
	var etcdOpts server.EtcdOptions
	c := &cobra.Command{
		Use:   "migrate --from bolt:DATA_DIR --to etcd:URL[,URL...]",
		Short: "Copy a store's sealed blobs to another engine (bolt to etcd, or back), offline and resumably",
		Long: `Copy every sealed blob of one store into an empty store of another engine,
unchanged: no root key is needed for the copy. Stop every server on both
stores first.

  --from / --to  bolt:DATA_DIR (the server's --data-dir)
                 etcd:URL[,URL...] (the members' client URLs; --etcd-* flags
                 give the prefix and client TLS)

The copy is resumable: run the same command again after an interruption and
it continues. A server refuses to open the target until the copy has
finished. At the end both stores are read in full and their entry counts and
SHA-256 digests compared; with the root key (--root-key-file or
$` + rootkey.EnvVar + `), every blob of the target is then opened and every
index checked, as ` + "`coffer operator verify`" + ` does.

To copy between two etcd installations, use snapshot save and restore.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "from", "to"); err != nil {
				return err
			}
			src, err := parseLocation("--from", from, etcdOpts)
			if err != nil {
				return err
			}
			dst, err := parseLocation("--to", to, etcdOpts)
			if err != nil {
				return err
			}
			if src.Storage == server.StorageEtcd && dst.Storage == server.StorageEtcd {
				return usagef("--from and --to are both etcd, and the --etcd-* flags can describe only one: copy between etcd installations with `coffer operator snapshot save` on one and `snapshot restore` on the other")
			}
			if src.Storage == server.StorageBolt && dst.Storage == server.StorageBolt && samePath(src.DataDir, dst.DataDir) {
				return usagef("--from and --to are the same data directory")
			}
			root, err := optionalRootKey(keyFile)
			if err != nil {
				return err
			}
			ctx := c.Context()
			sb, err := a.openExisting(ctx, src, "--from: ")
			if err != nil {
				return err
			}
			defer sb.Close()
			if err := transfer.CheckIdle(ctx, sb); err != nil {
				return fmt.Errorf("the source: %w", err)
			}
			// A half-copied source, or one without a keyring (the wrong
			// store), is refused before the target is created.
			if err := transfer.RefuseUnfinished(ctx, sb); err != nil {
				return fmt.Errorf("--from %s: %w", describe(src), err)
			}
			if id, err := barrier.StoreRootKeyID(ctx, sb); err != nil {
				return err
			} else if id == "" {
				why := transfer.ErrNoKeyring
				if first, err := sb.Scan(ctx, "", "", 1); err == nil && len(first) == 0 {
					why = transfer.ErrEmptySource
				}
				return fmt.Errorf("--from %s: %w", describe(src), why)
			} else {
				root = a.sealingKey(keyFile, root, id)
			}
			db, err := server.OpenEngine(ctx, dst, nil, a.logger(false))
			if err != nil {
				return optionError(err, storeFlags)
			}
			defer db.Close()
			fmt.Fprintf(a.stdout, "Migrating %s\n       to %s\n", describe(src), describe(dst))
			rep, err := transfer.Copy(ctx, transfer.Store{B: sb, Label: describe(src)}, db, transfer.CopyOptions{Op: "migrate", Progress: a.progress()})
			if err != nil {
				return interrupted(ctx, err, "migration")
			}
			a.printCopy(rep, "source")
			if err := a.verifyAfter(ctx, db, root); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Migration complete. Start the servers on the target (%s); keep the source until you are satisfied, then remove it.\n", serverFlagsFor(dst))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&from, "from", "", "the store to copy: bolt:DATA_DIR or etcd:URL[,URL...]")
	f.StringVar(&to, "to", "", "the empty store to copy into: bolt:DATA_DIR or etcd:URL[,URL...]")
	f.StringVar(&keyFile, "root-key-file", "", "root key, to open every copied blob at the end (default: $"+rootkey.EnvVar+"; without either, only counts and digests are compared)")
	bindEtcdFlags(c, &etcdOpts)
	return c
}

// bindEtcdFlags binds the etcd side's flags of migrate, as the server
// names them.
func bindEtcdFlags(c *cobra.Command, o *server.EtcdOptions) {
	f := c.Flags()
	f.StringVar(&o.CAFile, "etcd-ca-file", "", "PEM CA that signs the etcd members' certificates")
	f.StringVar(&o.CertFile, "etcd-cert-file", "", "PEM client certificate for etcd")
	f.StringVar(&o.KeyFile, "etcd-key-file", "", "PEM private key of the etcd client certificate")
	f.StringVar(&o.Prefix, "etcd-prefix", "/coffer/", "key prefix of the installation in etcd")
}

// parseLocation reads bolt:DATA_DIR or etcd:URL[,URL...].
func parseLocation(flag, loc string, etcdOpts server.EtcdOptions) (server.StoreOptions, error) {
	engine, where, ok := strings.Cut(loc, ":")
	if !ok || where == "" {
		return server.StoreOptions{}, usagef("%s %q: give bolt:DATA_DIR or etcd:URL[,URL...]", flag, loc)
	}
	switch engine {
	case server.StorageBolt:
		return server.StoreOptions{Storage: server.StorageBolt, DataDir: where}, nil
	case server.StorageEtcd:
		o := server.StoreOptions{Storage: server.StorageEtcd, Etcd: etcdOpts}
		for _, u := range strings.Split(where, ",") {
			if u = strings.TrimSpace(u); u != "" {
				o.Etcd.Endpoints = append(o.Etcd.Endpoints, u)
			}
		}
		return o, nil
	}
	return server.StoreOptions{}, usagef("%s %q: the engine is bolt or etcd", flag, loc)
}

func samePath(a, b string) bool {
	x, err1 := filepath.Abs(a)
	y, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && x == y
}

// describe names a store for reports and markers: bolt:FILE, or
// etcd:URLS prefix PREFIX.
func describe(o server.StoreOptions) string {
	if o.Storage == server.StorageEtcd {
		prefix := o.Etcd.Prefix
		if prefix == "" {
			prefix = "/coffer/"
		}
		return "etcd:" + strings.Join(o.Etcd.Endpoints, ",") + " prefix " + prefix
	}
	abs, err := filepath.Abs(filepath.Join(o.DataDir, server.StoreFile))
	if err != nil {
		abs = filepath.Join(o.DataDir, server.StoreFile)
	}
	return "bolt:" + abs
}

// serverFlagsFor says how to point a server at o.
func serverFlagsFor(o server.StoreOptions) string {
	if o.Storage == server.StorageEtcd {
		return "--storage etcd --etcd-endpoints " + strings.Join(o.Etcd.Endpoints, ",") + " --etcd-prefix " + o.Etcd.Prefix
	}
	return "--storage bolt --data-dir " + o.DataDir
}

// openExisting opens a store that must already exist: a bolt data
// directory without a store file is a mistyped path, not a new store.
// flag ("--from: ") starts its error.
func (a *app) openExisting(ctx context.Context, o server.StoreOptions, flag string) (server.Engine, error) {
	if err := o.Validate(); err != nil {
		return nil, optionError(err, storeFlags)
	}
	if o.Storage != server.StorageEtcd {
		file := filepath.Join(o.DataDir, server.StoreFile)
		if _, err := os.Stat(file); err != nil {
			return nil, fmt.Errorf("%sthere is no store at %s: name the data directory of the server (its --data-dir)", flag, file)
		}
	}
	b, err := server.OpenEngine(ctx, o, nil, a.logger(false))
	if err != nil {
		return nil, optionError(err, storeFlags)
	}
	return b, nil
}

// optionalRootKey reads the root key if one is given, by file or
// environment; nil if neither is. Unlike a server's start, it never
// finishes a staged rotation: these tools only read.
func optionalRootKey(path string) (*rootkey.Key, error) {
	if path != "" {
		k, err := rootkey.ReadFile(path)
		if err != nil {
			return nil, err
		}
		return &k, nil
	}
	if env := os.Getenv(rootkey.EnvVar); env != "" {
		k, err := rootkey.Parse(env)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rootkey.EnvVar, err)
		}
		return &k, nil
	}
	return nil, nil
}

// sealingKey returns the key that sealed a store whose keyring names root
// key sealed: the given key, or the one staged at FILE.new. A kill between
// re-wrapping the store and moving the staged key into place leaves that
// state, and the store in it is sound. These tools only read, so the file is
// not moved; a line says so, and the next server start moves it.
func (a *app) sealingKey(path string, root *rootkey.Key, sealed string) *rootkey.Key {
	if root == nil || sealed == "" || sealed == root.ID() {
		return root
	}
	next, ok := rootkey.StagedFor(path, sealed)
	if !ok {
		return root
	}
	fmt.Fprintf(a.stdout, "The store is sealed with the root key staged in %s.new (an interrupted rotation; the next server start moves it into place).\n", path)
	return &next
}

// progress prints how far a copy has got, at every tenth of the way.
func (a *app) progress() func(transfer.Progress) {
	last := -1
	return func(p transfer.Progress) {
		if p.Total == 0 {
			return
		}
		if tenth := p.Done * 10 / p.Total; tenth > last {
			last = tenth
			fmt.Fprintf(a.stdout, "  %d of %d entries merged\n", p.Done, p.Total)
		}
	}
}

// interrupted explains an error that stopped a copy midway.
func interrupted(ctx context.Context, err error, what string) error {
	if ctx.Err() != nil {
		return fmt.Errorf("the %s was interrupted; run the same command again to resume it: %w", what, err)
	}
	return err
}

func (a *app) printCopy(rep transfer.CopyReport, side string) {
	w := a.stdout
	fmt.Fprintf(w, "%-7s %s\n", side+":", rep.Source)
	switch {
	case rep.AlreadyDone:
		fmt.Fprintln(w, "The target already holds exactly these entries (an earlier run finished): nothing was written.")
	default:
		if rep.Resumed {
			fmt.Fprintln(w, "Resumed an earlier, unfinished run.")
		}
		fmt.Fprintf(w, "written: %d copied, %d replaced, %d removed, %d already there, in %d batches\n", rep.Copied, rep.Replaced, rep.Removed, rep.Unchanged, rep.Batches)
	}
	fmt.Fprintf(w, "target: %s\n", rep.Target)
	fmt.Fprintf(w, "Verified: the target holds exactly the %s's %d entries (same count, bytes and digest).\n", side, rep.Target.Entries)
}

// verifyAfter checks a store just written, if the root key is given.
func (a *app) verifyAfter(ctx context.Context, b physical.Backend, root *rootkey.Key) error {
	if root == nil {
		fmt.Fprintf(a.stdout, "No root key given (--root-key-file or %s): the blobs were compared, not opened; run `coffer operator verify` on the target to open them.\n", rootkey.EnvVar)
		return nil
	}
	rep, err := storecheck.Check(ctx, b, *root)
	if err != nil {
		return err
	}
	return a.printCheck(rep)
}

// printCheck prints a store check and returns a *storecheck.DamagedError
// if it found damage.
func (a *app) printCheck(rep storecheck.Report) error {
	w := a.stdout
	for _, p := range rep.Problems {
		fmt.Fprintln(w, p)
	}
	fmt.Fprintf(w, "Checked %d entries with root key %s: %d opened; %s.\n", rep.Entries, rep.RootKeyID, rep.Opened, counts(rep.Counts))
	if rep.Damaged() {
		return &storecheck.DamagedError{Problems: rep.Damage()}
	}
	notices := len(rep.Problems)
	if notices > 0 {
		fmt.Fprintf(w, "No damage (%d notices above).\n", notices)
	} else {
		fmt.Fprintln(w, "No damage.")
	}
	return nil
}

func counts(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%d %s", m[n], n)
	}
	if len(parts) == 0 {
		return "nothing else"
	}
	return strings.Join(parts, ", ")
}

func (a *app) snapshotCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "snapshot",
		Short: "Save a store to a sealed, point-in-time file, or restore one into an empty store",
	}
	c.AddCommand(a.snapshotSave(), a.snapshotRestore())
	return c
}

func (a *app) snapshotSave() *cobra.Command {
	var so server.StoreOptions
	var out string
	c := &cobra.Command{
		Use:   "save --out FILE",
		Short: "Write a consistent, still sealed copy of a store to FILE",
		Long: `Write every sealed blob of a store, as it was at one moment, to FILE: bolt
within one read transaction (stop the server first: it holds the file), etcd
at one revision (servers may keep running). The file never holds a value in
plaintext. Its header records the format, the engine, the root key id, the
entry count and a SHA-256 digest; with the root key (--root-key-file or
$` + rootkey.EnvVar + `) it also carries a MAC that only that key can make.
An existing FILE is never replaced.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "out"); err != nil {
				return err
			}
			root, err := optionalRootKey(so.RootKeyFile)
			if err != nil {
				return err
			}
			ctx := c.Context()
			b, err := a.openExisting(ctx, so, "")
			if err != nil {
				return err
			}
			defer b.Close()
			if sealed, err := barrier.StoreRootKeyID(ctx, b); err == nil {
				root = a.sealingKey(so.RootKeyFile, root, sealed)
			}
			h, err := transfer.Save(ctx, b, out, transfer.SaveOptions{Engine: engineOf(so), Source: describe(so), Root: root})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Snapshot of %s\nwritten to %s: %s, root key %s, taken %s.\n", describe(so), out,
				transfer.Summary{Entries: h.Entries, Bytes: h.Bytes, Digest: h.Digest}, h.RootKeyID, h.Created.Format("2006-01-02T15:04:05Z"))
			if h.MAC == "" {
				fmt.Fprintf(a.stdout, "Without the root key the header has no MAC: a restore can check the digest, not who made the file.\n")
			}
			return nil
		},
	}
	bindStoreFlags(c, &so)
	c.Flags().StringVar(&out, "out", "", "the snapshot file to write (mode 0600)")
	return c
}

func (a *app) snapshotRestore() *cobra.Command {
	var so server.StoreOptions
	var in string
	c := &cobra.Command{
		Use:   "restore --in FILE",
		Short: "Restore a snapshot into an empty store, then verify it",
		Long: `Write a snapshot's sealed blobs into an empty store (stop every server on
it first). The whole file is checked against its header before anything is
written, so a damaged or truncated file is refused. An interrupted restore
resumes when run again. At the end the store is read in full and compared
with the snapshot; with the root key (--root-key-file or $` + rootkey.EnvVar + `)
the header's MAC is checked first, and every restored blob is opened and
every index checked at the end.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "in"); err != nil {
				return err
			}
			if err := so.Validate(); err != nil {
				return optionError(err, storeFlags)
			}
			root, err := optionalRootKey(so.RootKeyFile)
			if err != nil {
				return err
			}
			snap, err := transfer.OpenSnapshot(in)
			if err != nil {
				return err
			}
			h := snap.Header
			root = a.sealingKey(so.RootKeyFile, root, h.RootKeyID)
			fmt.Fprintf(a.stdout, "Snapshot %s: %d entries of %s (%s), root key %s, taken %s.\n", in, h.Entries, h.Source, h.Engine, h.RootKeyID, h.Created.Format("2006-01-02T15:04:05Z"))
			if root != nil {
				auth, err := snap.Authenticate(*root)
				if err != nil {
					return err
				}
				if auth == transfer.Unauthenticated {
					fmt.Fprintln(a.stdout, "It was taken without the root key, so it has no MAC: only its digest is checked.")
				} else {
					fmt.Fprintln(a.stdout, "Its MAC matches under the root key.")
				}
			}
			ctx := c.Context()
			b, err := server.OpenEngine(ctx, so, nil, a.logger(false))
			if err != nil {
				return optionError(err, storeFlags)
			}
			defer b.Close()
			fmt.Fprintf(a.stdout, "Restoring into %s\n", describe(so))
			rep, err := transfer.Copy(ctx, snap, b, transfer.CopyOptions{Op: "snapshot restore", Progress: a.progress()})
			if err != nil {
				return interrupted(ctx, err, "restore")
			}
			a.printCopy(rep, "snapshot")
			if err := a.verifyAfter(ctx, b, root); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Restore complete. Start the servers on it (%s).\n", serverFlagsFor(so))
			return nil
		},
	}
	bindStoreFlags(c, &so)
	c.Flags().StringVar(&in, "in", "", "the snapshot file to restore")
	return c
}

func engineOf(o server.StoreOptions) string {
	if o.Storage == "" {
		return server.StorageBolt
	}
	return o.Storage
}

func (a *app) verifyCmd() *cobra.Command {
	var so server.StoreOptions
	c := &cobra.Command{
		Use:   "verify",
		Short: "Open every blob of a store with the root key and check every index; exit 1 on damage",
		Long: `Read a store at one point in time, open every sealed blob at its own key with
the root key (--root-key-file or $` + rootkey.EnvVar + `), and check that every
index agrees with what it indexes: object heads and their versions,
certificates and their managed keys and secrets, the vault registry, RBAC,
the directory and its indexes, the signing keys, the keyring. Each problem is
printed with its key. The exit code is 1 if any is damage, 0 otherwise
(notices, such as a key no component owns, are not damage).

bolt: stop the server first (it holds the file). etcd: servers may run.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			root, err := optionalRootKey(so.RootKeyFile)
			if err != nil {
				return err
			}
			if root == nil {
				return rootkey.ErrMissing
			}
			ctx := c.Context()
			b, err := a.openExisting(ctx, so, "")
			if err != nil {
				return err
			}
			defer b.Close()
			fmt.Fprintf(a.stdout, "Verifying %s\n", describe(so))
			if sealed, err := barrier.StoreRootKeyID(ctx, b); err == nil {
				root = a.sealingKey(so.RootKeyFile, root, sealed)
			}
			rep, err := storecheck.Check(ctx, b, *root)
			if err != nil {
				return err
			}
			return a.printCheck(rep)
		},
	}
	bindStoreFlags(c, &so)
	return c
}
