package cert

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

func lower(s string) string { return strings.ToLower(s) }

// managedOnly refuses to stage over an unmanaged key or secret of the name.
func managedOnly[T any](name, what string) func(cur *object.Version[T], next object.Version[T]) (object.Version[T], error) {
	return func(cur *object.Version[T], next object.Version[T]) (object.Version[T], error) {
		if cur != nil && !cur.Managed {
			return object.Version[T]{}, object.Errorf(object.ErrExists, "", "A %s named %s already exists in this vault; a certificate's %s would take its name.", what, name, what)
		}
		return next, nil
	}
}

// namesake explains a key or secret that blocks restoring a certificate
// of its name; other errors pass through.
func namesake(err error, what, name string) error {
	if errors.Is(err, object.ErrExists) || errors.Is(err, object.ErrDeleted) {
		return object.Errorf(object.ErrExists, "", "A %s named %s exists in this vault (live or soft-deleted); the certificate's %s cannot be restored over it.", what, name, what)
	}
	return err
}

// deletedNamesake explains a soft-deleted key or secret that blocks a
// certificate's name.
func deletedNamesake(err error, what, name string) error {
	if errors.Is(err, object.ErrDeleted) {
		return object.Errorf(object.ErrDeleted, "ObjectIsDeletedButRecoverable", "A deleted %s named %s is still recoverable, and a certificate's %s would take its name: purge or recover the %s first, or choose another certificate name.", what, name, what, what)
	}
	return err
}

// commit writes a new certificate version, its managed key and managed
// secret, under one new version id, and (fromOp) completes the operation,
// all in one atomic batch.
func (s *Service) commit(ctx context.Context, v *vault.Vault, name string, b certfmt.Bundle, p *Policy, enabled *bool, tags map[string]string, fromOp bool) (Certificate, error) {
	m, err := keyops.FromPrivateKey(b.Key)
	if err != nil {
		return Certificate{}, object.Invalidf("%v", err)
	}
	leaf := b.Leaf()
	nbf, exp := leaf.NotBefore.Unix(), leaf.NotAfter.Unix()
	ct := p.SecretProps.ContentType
	value, err := b.Encode(ct)
	if err != nil {
		return Certificate{}, err
	}
	en := true
	if enabled != nil {
		en = *enabled
	}
	attrs := object.Attributes{Enabled: en, NotBefore: &nbf, Expires: &exp}
	keyVer, err := key.NewVersion(m, key.Attrs{Enabled: &en, NotBefore: &nbf, Expires: &exp, Tags: tags}, true)
	if err != nil {
		return Certificate{}, err
	}
	meta, _ := json.Marshal(p)
	defer s.certs.Lock(v.Name, name)()
	var out Certificate
	err = object.Retry(func() error {
		id := object.NewVersionID()
		certCh, cv, ch, err := s.certs.StageCreate(ctx, v.Name, name, id, meta, func(*object.Version[Data]) (object.Version[Data], error) {
			return object.Version[Data]{Attributes: attrs, Tags: tags, Data: Data{CER: leaf.Raw, ContentType: ct}}, nil
		})
		if err != nil {
			return err
		}
		keyCh, _, _, err := s.keys.StageCreate(ctx, v.Name, name, id, nil, func(cur *object.Version[key.Data]) (object.Version[key.Data], error) {
			return managedOnly[key.Data](name, "key")(cur, keyVer)
		})
		if err != nil {
			return deletedNamesake(err, "key", name)
		}
		secCh, _, _, err := s.secrets.StageCreate(ctx, v.Name, name, id, nil, func(cur *object.Version[secret.Data]) (object.Version[secret.Data], error) {
			return managedOnly[secret.Data](name, "secret")(cur, object.Version[secret.Data]{Attributes: attrs, Tags: tags, ContentType: ct, Managed: true, Data: secret.Data{Value: value}})
		})
		if err != nil {
			return deletedNamesake(err, "secret", name)
		}
		changes := []object.Change{certCh, keyCh, secCh}
		if fromOp {
			op, rev, err := s.getOp(ctx, v.Name, name)
			if err != nil {
				return err
			}
			if op.Op.Status != InProgress {
				return object.Errorf(object.ErrExists, "", "The certificate operation for %s is %s; start a new one.", name, op.Op.Status)
			}
			op.Op.Status, op.Op.StatusDetails, op.Target, op.Key = Completed, "", id, nil
			ob, _ := json.Marshal(op)
			changes = append(changes, object.Change{Conds: []barrier.Cond{{Key: opKey(v.Name, name), Rev: rev}}, Ops: []barrier.Op{{Key: opKey(v.Name, name), Value: ob}}})
		}
		if err := object.Apply(ctx, s.st, changes...); err != nil {
			return err
		}
		out = s.toCert(cv, ch)
		return nil
	})
	return out, kind.Map(err, name, "")
}

// Import stores a certificate with its private key, from a PFX (with its
// password) or PEM. Its policy is read from the certificate; only the
// secret's content type comes from the caller.
func (s *Service) Import(ctx context.Context, v *vault.Vault, name string, value []byte, password string, policy *Policy, enabled *bool, tags map[string]string) (Certificate, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Certificate{}, err
	}
	if len(value) > MaxImportBytes {
		return Certificate{}, object.Invalidf("The certificate to import is %d bytes, over the %d-byte limit.", len(value), MaxImportBytes)
	}
	b, err := certfmt.Decode(value, password)
	if err != nil {
		return Certificate{}, object.Invalidf("The certificate cannot be imported: %v.", err)
	}
	ct := certfmt.PFX
	if strings.HasPrefix(strings.TrimSpace(string(value)), "-----BEGIN") {
		ct = certfmt.PEM
	}
	if policy != nil && policy.SecretProps != nil && policy.SecretProps.ContentType != "" {
		ct = policy.SecretProps.ContentType
	}
	if ct != certfmt.PFX && ct != certfmt.PEM {
		return Certificate{}, object.Invalidf("secret_props.contentType %q is not supported: use %s or %s.", ct, certfmt.PFX, certfmt.PEM)
	}
	// The policy describes the certificate as it is. It is not checked
	// against what Coffer would issue: any certificate a caller holds can be
	// stored (a long validity, a subject attribute Coffer cannot write).
	p := policyOf(b.Leaf(), ct)
	if err := s.checkNames(ctx, v, name); err != nil {
		return Certificate{}, err
	}
	return s.commit(ctx, v, name, b, p, enabled, tags, false)
}

// Merge completes a pending operation of issuer Unknown with the signed
// certificate (and chain) whose key is the pending key.
func (s *Service) Merge(ctx context.Context, v *vault.Vault, name string, x5c [][]byte, enabled *bool, tags map[string]string) (Certificate, error) {
	p, _, err := s.getOp(ctx, v.Name, name)
	if err != nil {
		return Certificate{}, err
	}
	if p.Op.Status != InProgress || p.Key == nil {
		return Certificate{}, object.Errorf(object.ErrInvalid, "", "Certificate %s has no operation waiting for a merge (its operation is %s).", name, p.Op.Status)
	}
	var certs []*x509.Certificate
	for i, der := range x5c {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Certificate{}, object.Invalidf("x5c[%d] is not a DER certificate: %v", i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return Certificate{}, object.Invalidf("The merge needs the signed certificate in x5c.")
	}
	m, err := keyops.FromJWK(*p.Key)
	if err != nil {
		return Certificate{}, err
	}
	signer := m.Signer()
	if signer == nil {
		return Certificate{}, object.Invalidf("The pending key of %s cannot sign a certificate.", name)
	}
	b, err := certfmt.Assemble(signer, certs)
	if err != nil {
		return Certificate{}, object.Invalidf("The merged certificate does not match the pending key: %v", err)
	}
	if enabled == nil {
		enabled = p.Enable
	}
	if tags == nil {
		tags = p.Tags
	}
	return s.commit(ctx, v, name, b, &p.Policy, enabled, tags, true)
}

// Update changes a certificate version's enabled flag and tags, and the
// same version of its managed key and secret with it.
func (s *Service) Update(ctx context.Context, v *vault.Vault, name, version string, enabled *bool, tags map[string]string) (Certificate, error) {
	if err := kind.ValidateName(name, version); err != nil {
		return Certificate{}, err
	}
	defer s.certs.Lock(v.Name, name)()
	var out Certificate
	err := object.Retry(func() error {
		cur, h, err := s.certs.Get(ctx, v.Name, name, version)
		if err != nil {
			return err
		}
		patch := object.Patch{Enabled: enabled, Tags: tags}
		certCh, cv, err := s.certs.StageUpdate(ctx, v.Name, name, cur.ID, func(ver *object.Version[Data]) error { return patch.Apply(&ver.Attributes, &ver.Tags) })
		if err != nil {
			return err
		}
		changes := []object.Change{certCh}
		if err := also(&changes, func() (object.Change, error) {
			ch, _, err := s.keys.StageUpdate(ctx, v.Name, name, cur.ID, func(ver *object.Version[key.Data]) error { return patch.Apply(&ver.Attributes, &ver.Tags) })
			return ch, err
		}, func() (object.Change, error) {
			ch, _, err := s.secrets.StageUpdate(ctx, v.Name, name, cur.ID, func(ver *object.Version[secret.Data]) error { return patch.Apply(&ver.Attributes, &ver.Tags) })
			return ch, err
		}); err != nil {
			return err
		}
		if err := object.Apply(ctx, s.st, changes...); err != nil {
			return err
		}
		out = s.toCert(cv, h)
		return nil
	})
	return out, kind.Map(err, name, version)
}

// also stages the same change on the managed key and secret, which may be
// missing (a certificate restored before they existed); other errors stop.
func also(changes *[]object.Change, stages ...func() (object.Change, error)) error {
	for _, stage := range stages {
		ch, err := stage()
		if errors.Is(err, object.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		*changes = append(*changes, ch)
	}
	return nil
}

// Delete soft-deletes a certificate with its managed key and secret.
func (s *Service) Delete(ctx context.Context, v *vault.Vault, name string) (Deleted, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Deleted{}, err
	}
	defer s.certs.Lock(v.Name, name)()
	var out Deleted
	err := object.Retry(func() error {
		certCh, h, cv, err := s.certs.StageDelete(ctx, v.Name, name, v.Retention())
		if err != nil {
			return err
		}
		changes := []object.Change{certCh}
		if err := also(&changes, func() (object.Change, error) {
			ch, _, _, err := s.keys.StageDelete(ctx, v.Name, name, v.Retention())
			return ch, err
		}, func() (object.Change, error) {
			ch, _, _, err := s.secrets.StageDelete(ctx, v.Name, name, v.Retention())
			return ch, err
		}); err != nil {
			return err
		}
		if err := object.Apply(ctx, s.st, changes...); err != nil {
			return err
		}
		out = Deleted{Certificate: s.toCert(cv, h), DeletedDate: h.DeletedDate, ScheduledPurge: h.ScheduledPurge}
		return nil
	})
	return out, kind.Map(err, name, "")
}

// GetDeleted returns a soft-deleted certificate.
func (s *Service) GetDeleted(ctx context.Context, v *vault.Vault, name string) (Deleted, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Deleted{}, err
	}
	h, cv, err := s.certs.GetDeleted(ctx, v.Name, name)
	if err != nil {
		return Deleted{}, kind.MapDeleted(err, name)
	}
	return Deleted{Certificate: s.toCert(cv, h), DeletedDate: h.DeletedDate, ScheduledPurge: h.ScheduledPurge}, nil
}

// Recover brings a soft-deleted certificate back with its key and secret.
func (s *Service) Recover(ctx context.Context, v *vault.Vault, name string) (Certificate, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Certificate{}, err
	}
	defer s.certs.Lock(v.Name, name)()
	var out Certificate
	err := object.Retry(func() error {
		certCh, h, cv, err := s.certs.StageRecover(ctx, v.Name, name)
		if err != nil {
			return err
		}
		changes := []object.Change{certCh}
		if err := also(&changes, func() (object.Change, error) {
			ch, _, _, err := s.keys.StageRecover(ctx, v.Name, name)
			return ch, err
		}, func() (object.Change, error) {
			ch, _, _, err := s.secrets.StageRecover(ctx, v.Name, name)
			return ch, err
		}); err != nil {
			return err
		}
		if err := object.Apply(ctx, s.st, changes...); err != nil {
			return err
		}
		out = s.toCert(cv, h)
		return nil
	})
	return out, kind.MapDeleted(err, name)
}

// Purge permanently removes a soft-deleted certificate, key and secret.
func (s *Service) Purge(ctx context.Context, v *vault.Vault, name string) error {
	return kind.Purge(name, v.PurgeProtection, v.RetentionDays, func() error { return s.purge(ctx, v, name) })
}

func (s *Service) purge(ctx context.Context, v *vault.Vault, name string) error {
	defer s.certs.Lock(v.Name, name)()
	return object.Retry(func() error {
		certCh, err := s.certs.StagePurge(ctx, v.Name, name)
		if err != nil {
			return err
		}
		changes := []object.Change{certCh}
		if err := also(&changes, func() (object.Change, error) { return s.keys.StagePurge(ctx, v.Name, name) }, func() (object.Change, error) { return s.secrets.StagePurge(ctx, v.Name, name) }); err != nil {
			return err
		}
		if !s.certs.Fits(changes...) {
			return s.purgeInBatches(ctx, v, name)
		}
		return object.Apply(ctx, s.st, changes...)
	})
}

// purgeInBatches purges a certificate whose versions, with its key's and
// secret's, are more than one batch of the store holds (etcd's
// transaction: 128 operations by default, about 40 versions of the
// three). It marks the three as being purged in one batch, so that none
// can be recovered without the others, then purges the key and the secret
// and, last, the certificate, each in batches. One cut off midway leaves
// the certificate being purged, which the next purge finishes.
func (s *Service) purgeInBatches(ctx context.Context, v *vault.Vault, name string) error {
	certMark, err := s.certs.StageMarkPurging(ctx, v.Name, name)
	if err != nil {
		return err
	}
	marks := []object.Change{certMark}
	if err := also(&marks, func() (object.Change, error) { return s.keys.StageMarkPurging(ctx, v.Name, name) },
		func() (object.Change, error) { return s.secrets.StageMarkPurging(ctx, v.Name, name) }); err != nil {
		return err
	}
	if err := object.Apply(ctx, s.st, marks...); err != nil {
		return err
	}
	for _, purge := range []func() error{
		func() error { return s.keys.PurgeInBatches(ctx, v.Name, name) },
		func() error { return s.secrets.PurgeInBatches(ctx, v.Name, name) },
		func() error { return s.certs.PurgeInBatches(ctx, v.Name, name) },
	} {
		if err := purge(); err != nil && !errors.Is(err, object.ErrNotFound) {
			return err
		}
	}
	return nil
}

// PurgeDue purges the vault's deleted certificates past their retention.
func (s *Service) PurgeDue(ctx context.Context, v *vault.Vault) (int, error) {
	due, err := s.certs.DueForPurge(ctx, v.Name, s.now())
	n := 0
	for _, it := range due {
		if err := s.purge(ctx, v, it.Head.Name); err != nil && !errors.Is(err, object.ErrNotFound) {
			return n, err
		}
		n++
	}
	return n, err
}

// List returns a page of certificates (current versions).
func (s *Service) List(ctx context.Context, v *vault.Vault, after string, limit int) ([]Certificate, string, error) {
	items, next, err := s.certs.List(ctx, v.Name, after, limit)
	out := make([]Certificate, len(items))
	for i, it := range items {
		out[i] = s.toCert(it.Current, object.Head{})
	}
	return out, next, err
}

// ListVersions returns a page of a certificate's versions.
func (s *Service) ListVersions(ctx context.Context, v *vault.Vault, name, after string, limit int) ([]Certificate, string, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return nil, "", err
	}
	vers, next, err := s.certs.ListVersions(ctx, v.Name, name, after, limit)
	if err != nil {
		return nil, "", kind.Map(err, name, "")
	}
	out := make([]Certificate, len(vers))
	for i, ver := range vers {
		out[i] = s.toCert(ver, object.Head{})
	}
	return out, next, nil
}

// ListDeleted returns a page of soft-deleted certificates.
func (s *Service) ListDeleted(ctx context.Context, v *vault.Vault, after string, limit int) ([]Deleted, string, error) {
	items, next, err := s.certs.ListDeleted(ctx, v.Name, after, limit)
	out := make([]Deleted, len(items))
	for i, it := range items {
		out[i] = Deleted{Certificate: s.toCert(it.Current, object.Head{}), DeletedDate: it.Head.DeletedDate, ScheduledPurge: it.Head.ScheduledPurge}
	}
	return out, next, err
}

// Backup returns the certificate, key and secret, every version, as one
// sealed blob.
func (s *Service) Backup(ctx context.Context, v *vault.Vault, name string) ([]byte, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return nil, err
	}
	defer s.certs.Lock(v.Name, name)()
	ce, err := s.certs.Export(ctx, v.Name, name)
	if err != nil {
		return nil, kind.Map(err, name, "")
	}
	ke, err := s.keys.Export(ctx, v.Name, name)
	if err != nil {
		return nil, kind.Map(err, name, "")
	}
	se, err := s.secrets.Export(ctx, v.Name, name)
	if err != nil {
		return nil, kind.Map(err, name, "")
	}
	b := object.Backup{TenantID: v.TenantID, Objects: map[string]json.RawMessage{
		collection: object.ExportJSON(ce), key.Collection: object.ExportJSON(ke), secret.Collection: object.ExportJSON(se)}}
	return kind.SealBackup(s.seal, backupPurpose, b, name)
}

// Restore writes a backed-up certificate, key and secret into v.
func (s *Service) Restore(ctx context.Context, v *vault.Vault, blob []byte) (Certificate, error) {
	b, err := kind.OpenBackup(s.seal, backupPurpose, blob, v.TenantID, v.Name)
	if err != nil {
		return Certificate{}, err
	}
	ce, err1 := object.ImportJSON[Data](b.Objects[collection], collection)
	ke, err2 := object.ImportJSON[key.Data](b.Objects[key.Collection], key.Collection)
	se, err3 := object.ImportJSON[secret.Data](b.Objects[secret.Collection], secret.Collection)
	if err := errors.Join(err1, err2, err3); err != nil || ce.Head.Name != ke.Head.Name || ce.Head.Name != se.Head.Name {
		return Certificate{}, object.Invalidf("The backup blob is not a certificate backup.")
	}
	name := ce.Head.Name
	defer s.certs.Lock(v.Name, name)()
	certCh, h, cv, err := s.certs.StageImport(ctx, v.Name, ce)
	if err != nil {
		return Certificate{}, kind.Map(err, name, "")
	}
	keyCh, _, _, err := s.keys.StageImport(ctx, v.Name, ke)
	if err != nil {
		return Certificate{}, namesake(err, "key", name)
	}
	secCh, _, _, err := s.secrets.StageImport(ctx, v.Name, se)
	if err != nil {
		return Certificate{}, namesake(err, "secret", name)
	}
	if s.certs.Fits(certCh, keyCh, secCh) {
		err = object.Apply(ctx, s.st, certCh, keyCh, secCh)
	} else {
		err = s.restoreInBatches(ctx, v, ce, ke, se)
	}
	if errors.Is(err, barrier.ErrConflict) {
		return Certificate{}, kind.Map(object.ErrExists, name, "")
	} else if err != nil {
		return Certificate{}, err
	}
	return s.toCert(cv, h), nil
}

// restoreInBatches restores a certificate whose versions, with its key's
// and secret's, are more than one batch of the store holds (etcd's
// transaction). The three are written as deleted objects being purged,
// their records and current versions in one batch, then each one's other
// versions, and are made live together in one last batch; if a step
// fails, what was written is purged.
func (s *Service) restoreInBatches(ctx context.Context, v *vault.Vault, ce object.Export[Data], ke object.Export[key.Data], se object.Export[secret.Data]) error {
	certFirst, cb, err := s.certs.StageImportStart(ctx, v.Name, ce)
	if err != nil {
		return err
	}
	keyFirst, kb, err := s.keys.StageImportStart(ctx, v.Name, ke)
	if err != nil {
		return err
	}
	secFirst, sb, err := s.secrets.StageImportStart(ctx, v.Name, se)
	if err != nil {
		return err
	}
	if err := object.Apply(ctx, s.st, certFirst, keyFirst, secFirst); err != nil {
		return err
	}
	if err = s.certs.ImportVersions(ctx, cb); err == nil {
		if err = s.keys.ImportVersions(ctx, kb); err == nil {
			err = s.secrets.ImportVersions(ctx, sb)
		}
	}
	if err == nil {
		err = object.Apply(ctx, s.st, s.certs.StageImportFinish(cb), s.keys.StageImportFinish(kb), s.secrets.StageImportFinish(sb))
	}
	err = object.Interrupted(ce.Head.Name, err)
	if err != nil {
		if perr := s.purgeInBatches(ctx, v, ce.Head.Name); perr != nil && !errors.Is(perr, object.ErrNotFound) {
			return fmt.Errorf("%w (and removing what was written: %v; purge the certificate %s to finish)", err, perr, ce.Head.Name)
		}
	}
	return err
}
