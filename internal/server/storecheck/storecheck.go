// Package storecheck checks a whole store, as `coffer operator verify`
// does: every sealed blob must open with the root key at its own key, and
// every index must agree with what it indexes. It is the store's fsck,
// run after a crash, a migration or a restore.
//
// It reads the store at one point in time (physical.Walk) and never
// writes. It keeps only the little it needs to cross-check (heads, version
// ids, index targets), never a secret's value, and no problem it reports
// holds one: problems name keys, object names and versions only.
//
// What is checked, by key prefix:
//
//	core/keyring              opens with the root key; every data key installs
//	o/V/K/h|d/N               decodes; names an existing current (and previous)
//	                          version; its vault is in the registry; not both
//	                          live and deleted; deleted heads carry their dates
//	o/V/K/v/N/ID              decodes as its kind's version (key material
//	                          parses, a certificate is DER); has a head
//	o/V/certificates/...      a certificate's managed key and secret exist in
//	                          the same state, with the same versions, marked
//	                          managed; a managed key or secret has its certificate
//	certops/V/N               decodes; its vault exists
//	vaults/N                  decodes, is named N, validates, its tenant exists
//	rbac/T/ID, rbac-roles/T/ID decode, match their keys; scopes are valid
//	authority/...             tenants, principals and both of their indexes
//	                          agree; signing keys parse, one is active
//	bootstrap/state           its tenant and administrator exist
package storecheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/server/storage/transfer"
)

// ErrEmpty means the store holds nothing at all: there is nothing to check,
// and probably the wrong store was named.
var ErrEmpty = errors.New("the store is empty: nothing to check (is it the right store: --data-dir, --etcd-prefix?)")

// Severity says how bad a problem is.
type Severity int

const (
	// Damage is a broken blob or index: the store is not as Coffer wrote it.
	Damage Severity = iota
	// Notice is worth knowing but harmless: a key no component owns, a role
	// assignment whose custom role was deleted (it grants nothing).
	Notice
)

func (s Severity) String() string {
	if s == Notice {
		return "notice"
	}
	return "damage"
}

// Problem is one finding, at one key.
type Problem struct {
	Key      string
	Severity Severity
	Problem  string
}

func (p Problem) String() string { return fmt.Sprintf("%s: %s: %s", p.Severity, p.Key, p.Problem) }

// Report is what Check found.
type Report struct {
	// RootKeyID is the key the store is sealed with.
	RootKeyID string
	// Entries is the number of entries read, Opened the number of blobs
	// that opened.
	Entries, Opened int
	// Counts says how many of each kind of record were checked, by name
	// ("vaults", "object versions").
	Counts map[string]int
	// Problems are sorted by key.
	Problems []Problem
}

// Damaged reports whether any problem is damage.
func (r Report) Damaged() bool {
	for _, p := range r.Problems {
		if p.Severity == Damage {
			return true
		}
	}
	return false
}

// Damage returns the number of damage problems.
func (r Report) Damage() int {
	n := 0
	for _, p := range r.Problems {
		if p.Severity == Damage {
			n++
		}
	}
	return n
}

// DamagedError is what a caller that wants an error for damage returns.
type DamagedError struct{ Problems int }

func (e *DamagedError) Error() string {
	return fmt.Sprintf("the store is damaged: %d problems (listed above); restore it from a snapshot (coffer operator snapshot restore), or repair the keys named", e.Problems)
}

// Check opens every blob of b with root and checks every index. The error
// is for what stopped the check (the store unreadable, the wrong root key,
// an empty store); damage is in the report.
func Check(ctx context.Context, b physical.Backend, root rootkey.Key) (Report, error) {
	c := newChecker()
	rep := Report{Counts: c.counts}
	sealedBy, err := barrier.StoreRootKeyID(ctx, b)
	switch {
	case errors.Is(err, barrier.ErrCorrupt):
		c.damage(barrier.KeyringKey, "the keyring has an unknown format: no blob in the store can be opened")
		return c.report(rep), nil
	case err != nil:
		return rep, err
	case sealedBy == "":
		first, err := b.Scan(ctx, "", "", 1)
		if err != nil {
			return rep, err
		}
		if len(first) == 0 {
			return rep, ErrEmpty
		}
		c.damage(barrier.KeyringKey, "the keyring is missing: no blob in the store can be opened")
		return c.report(rep), nil
	case sealedBy != root.ID():
		return rep, &barrier.RootKeyMismatchError{Given: root.ID(), Sealed: sealedBy}
	}
	rep.RootKeyID = sealedBy
	br, err := barrier.Open(ctx, b, root)
	if err != nil {
		c.damage(barrier.KeyringKey, "the keyring does not open with root key %s: %v", root.ID(), err)
		return c.report(rep), nil
	}
	err = physical.Walk(ctx, b, "", func(e physical.Entry) error {
		rep.Entries++
		switch {
		case e.Key == barrier.KeyringKey:
			rep.Opened++
			return nil
		case e.Key == transfer.MarkerKey:
			c.damage(e.Key, "the store is the target of an unfinished migration or restore: its content is partial; run that `coffer operator migrate` or `snapshot restore` again to finish it")
			return nil
		case strings.HasPrefix(e.Key, barrier.ReservedPrefix):
			c.notice(e.Key, "an unknown record in the barrier's reserved namespace; nothing reads it")
			return nil
		}
		plain, err := br.Unseal(e.Key, e.Value)
		if err != nil {
			c.damage(e.Key, "the sealed blob does not open: it was altered, moved here from another key, or sealed with a data key the keyring lacks")
			if strings.HasPrefix(e.Key, "o/") {
				c.brokenBlob(e.Key)
			}
			return nil
		}
		rep.Opened++
		c.record(e.Key, plain)
		clear(plain)
		return nil
	})
	if err != nil {
		return rep, err
	}
	c.crossCheck()
	return c.report(rep), nil
}

// checker holds what the walk learnt, for the cross-checks after it.
type checker struct {
	problems []Problem
	counts   map[string]int

	objects    map[objectID]*obj
	vaults     map[string]string // name -> tenant
	needVault  []ref             // records that need their vault
	needTenant []ref             // records that need their tenant
	tenants    map[string]bool
	principals map[string]principal // tenant/lower(appID)
	objIndex   []indexEntry
	resIndex   []indexEntry
	roles      map[string]bool // tenant/id of custom roles
	assigned   []assignment
	signing    int
	active     int
	bootstrap  *bootstrapRef
}

func newChecker() *checker {
	return &checker{counts: map[string]int{}, objects: map[objectID]*obj{}, vaults: map[string]string{}, tenants: map[string]bool{},
		principals: map[string]principal{}, roles: map[string]bool{}}
}

func (c *checker) damage(key, format string, args ...any) {
	c.problems = append(c.problems, Problem{Key: key, Severity: Damage, Problem: fmt.Sprintf(format, args...)})
}

func (c *checker) notice(key, format string, args ...any) {
	c.problems = append(c.problems, Problem{Key: key, Severity: Notice, Problem: fmt.Sprintf(format, args...)})
}

func (c *checker) report(rep Report) Report {
	sort.SliceStable(c.problems, func(i, j int) bool { return c.problems[i].Key < c.problems[j].Key })
	rep.Problems = c.problems
	rep.Counts = c.counts
	return rep
}

// decode unmarshals plain into v, reporting damage at key if it fails.
func (c *checker) decode(key string, plain []byte, v any, what string) bool {
	if err := json.Unmarshal(plain, v); err != nil {
		c.damage(key, "does not decode as %s: %v", what, jsonReason(err))
		return false
	}
	return true
}

// jsonReason keeps a decoding error's kind and place, never the bytes it
// choked on (they may be part of a secret).
func jsonReason(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q holds a %s, not a %s", te.Field, te.Value, te.Type)
	}
	return "malformed JSON"
}

// record dispatches a decrypted record to the checks of its prefix.
func (c *checker) record(key string, plain []byte) {
	switch {
	case strings.HasPrefix(key, "o/"):
		c.objectRecord(key, plain)
	case strings.HasPrefix(key, "certops/"):
		c.certOp(key, plain)
	case strings.HasPrefix(key, "vaults/"):
		c.vault(key, plain)
	case strings.HasPrefix(key, "rbac/"):
		c.assignment(key, plain)
	case strings.HasPrefix(key, "rbac-roles/"):
		c.customRole(key, plain)
	case strings.HasPrefix(key, "authority/"):
		c.authority(key, plain)
	case key == "bootstrap/state":
		c.bootstrapState(key, plain)
	default:
		c.counts["other records"]++
		c.notice(key, "no component owns this key: its blob opens, but nothing else about it was checked")
	}
}

// split cuts key after prefix into exactly n non-empty parts.
func split(key, prefix string, n int) ([]string, bool) {
	parts := strings.SplitN(strings.TrimPrefix(key, prefix), "/", n)
	if len(parts) != n {
		return nil, false
	}
	for _, p := range parts {
		if p == "" {
			return nil, false
		}
	}
	return parts, true
}
