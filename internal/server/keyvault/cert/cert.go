// Package cert implements Key Vault certificates. A certificate version is
// three objects sharing one version id: the certificate, a managed key
// holding its private key, and a managed secret holding the key and chain
// (as PFX or PEM). Every change to a certificate changes all three in one
// atomic batch, so a crash never leaves them apart.
package cert

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/acme"
	"github.com/cofferhq/coffer/internal/server/egress"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

const kind object.Kind = "certificate"

// Collection is the object-store kind of certificates.
const Collection = collection

const (
	collection    = "certificates"
	backupPurpose = "backup/certificates/v1"
	opPrefix      = "certops/"
	// MaxImportBytes bounds an imported PFX or PEM.
	MaxImportBytes = 128 << 10
)

// Data is what a certificate version stores: the DER certificate and the
// content type its secret was written in.
type Data struct {
	CER         []byte `json:"cer"`
	ContentType string `json:"contentType"`
}

// Certificate is one certificate version.
type Certificate struct {
	Name        string
	Version     string
	CER         []byte
	X5T         []byte
	ContentType string
	Attributes  object.Attributes
	Tags        map[string]string
	Policy      *Policy
}

// Deleted is a soft-deleted certificate.
type Deleted struct {
	Certificate
	DeletedDate    int64
	ScheduledPurge int64
}

// Operation is a certificate creation in progress, in Key Vault's shape
// (ID is filled in by the HTTP layer).
type Operation struct {
	Issuer                IssuerParams `json:"issuer"`
	CSR                   []byte       `json:"csr,omitempty"`
	CancellationRequested bool         `json:"cancellation_requested"`
	Status                string       `json:"status"`
	StatusDetails         string       `json:"status_details,omitempty"`
	Error                 *OpError     `json:"error,omitempty"`
	TargetVersion         string       `json:"-"`
	RequestID             string       `json:"request_id"`
}

// OpError is why an operation failed.
type OpError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Operation statuses.
const (
	InProgress = "inProgress"
	Completed  = "completed"
	Failed     = "failed"
	Cancelled  = "cancelled"
)

// pending is the stored state of an operation: what to create, and for a
// CSR awaiting its signed certificate, the private key (sealed like all
// stored values).
type pending struct {
	Name   string            `json:"name"`
	Op     Operation         `json:"op"`
	Policy Policy            `json:"policy"`
	Enable *bool             `json:"enabled,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
	Key    *keyops.JWK       `json:"key,omitempty"`
	Target string            `json:"target,omitempty"`
}

// Store is what the service needs of the barrier.
type Store interface {
	object.Store
}

// Service serves certificates for every vault.
type Service struct {
	st      Store
	certs   *object.Collection[Data]
	keys    *object.Collection[key.Data]
	secrets *object.Collection[secret.Data]
	seal    object.Sealer
	now     func() time.Time
	log     *slog.Logger
	// generate makes new keys; a test seam, so a test can hold issuance
	// inside key generation for as long as it needs.
	generate func(kty string, size int, crv string) (*keyops.Material, error)

	// egress checks the URLs of ACME issuers; acme orders from them.
	egress egress.Policy
	acme   *acme.Orderer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// UseEgress sets the policy that the URLs of ACME issuers (directories,
// DNS hooks) are checked against, and that their requests follow. The
// zero policy refuses internal addresses.
func (s *Service) UseEgress(p egress.Policy) { s.egress = p }

// New returns a service over st, keeping managed keys and secrets in the
// given services' collections.
func New(st Store, seal object.Sealer, keys *key.Service, secrets *secret.Service, now func() time.Time, log *slog.Logger) *Service {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{st: st, certs: object.New[Data](st, collection, now), keys: keys.Collection(), secrets: secrets.Collection(),
		seal: seal, now: now, log: log, generate: keyops.Generate, ctx: ctx, cancel: cancel}
}

// Close stops background issuance and waits for it.
func (s *Service) Close() {
	s.cancel()
	s.wg.Wait()
}

func opKey(vault, name string) string { return opPrefix + vault + "/" + lower(name) }

func (s *Service) toCert(v object.Version[Data], h object.Head) Certificate {
	sum := sha1.Sum(v.Data.CER)
	c := Certificate{Name: v.Name, Version: v.ID, CER: v.Data.CER, X5T: sum[:], ContentType: v.Data.ContentType, Attributes: v.Attributes, Tags: v.Tags}
	if len(h.Meta) > 0 {
		var p Policy
		if json.Unmarshal(h.Meta, &p) == nil {
			c.Policy = &p
		}
	}
	return c
}

// Get returns a certificate version, with the certificate's policy.
func (s *Service) Get(ctx context.Context, v *vault.Vault, name, version string) (Certificate, error) {
	if err := kind.ValidateName(name, version); err != nil {
		return Certificate{}, err
	}
	ver, h, err := s.certs.Get(ctx, v.Name, name, version)
	if err != nil {
		return Certificate{}, kind.Map(err, name, version)
	}
	return s.toCert(ver, h), nil
}

// GetPolicy returns a certificate's policy.
func (s *Service) GetPolicy(ctx context.Context, v *vault.Vault, name string) (Policy, error) {
	c, err := s.Get(ctx, v, name, "")
	if err != nil {
		return Policy{}, err
	}
	if c.Policy == nil {
		return Policy{}, kind.NotFound(name, "")
	}
	return *c.Policy, nil
}

// UpdatePolicy merges changes into a certificate's policy; it applies to
// the versions made from now on.
func (s *Service) UpdatePolicy(ctx context.Context, v *vault.Vault, name string, in Policy) (Policy, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Policy{}, err
	}
	defer s.certs.Lock(v.Name, name)()
	var out Policy
	err := object.Retry(func() error {
		ch, err := s.certs.StageHeadMeta(ctx, v.Name, name, func(meta json.RawMessage) (json.RawMessage, error) {
			var p Policy
			json.Unmarshal(meta, &p)
			if err := merge(&p, in); err != nil {
				return nil, err
			}
			if err := Normalize(&p); err != nil {
				return nil, err
			}
			if err := s.checkIssuer(ctx, v, &p); err != nil {
				return nil, err
			}
			p.Attributes.Updated = s.now().Unix()
			out = p
			return json.Marshal(p)
		})
		if err != nil {
			return err
		}
		return object.Apply(ctx, s.st, ch)
	})
	return out, kind.Map(err, name, "")
}

// merge lays the members set in patch over p, member by member at every
// depth, so a PATCH of x509_props.validity_months keeps the subject. Lists
// are replaced whole.
func merge(p *Policy, patch Policy) error {
	patch.ID = ""
	if patch.Attributes != nil {
		patch.Attributes = &PolicyAttrs{Enabled: patch.Attributes.Enabled}
	}
	var cur, in map[string]any
	b, _ := json.Marshal(p)
	json.Unmarshal(b, &cur)
	b, _ = json.Marshal(patch)
	json.Unmarshal(b, &in)
	b, _ = json.Marshal(mergeMaps(cur, in))
	var out Policy
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	*p = out
	return nil
}

func mergeMaps(dst, src map[string]any) map[string]any {
	if dst == nil {
		dst = map[string]any{}
	}
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				dst[k] = mergeMaps(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// Create starts making a new version from policy (nil: the certificate's
// current policy). It returns the pending operation at once; issuance runs
// in the background, and GET .../pending reports when it completes.
func (s *Service) Create(ctx context.Context, v *vault.Vault, name string, policy *Policy, enabled *bool, tags map[string]string) (Operation, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Operation{}, err
	}
	if policy == nil {
		if cur, err := s.Get(ctx, v, name, ""); err == nil && cur.Policy != nil {
			policy = cur.Policy
		}
	}
	if err := Normalize(policy); err != nil {
		return Operation{}, err
	}
	if err := s.checkIssuer(ctx, v, policy); err != nil {
		return Operation{}, err
	}
	if err := s.checkNames(ctx, v, name); err != nil {
		return Operation{}, err
	}
	now := s.now().Unix()
	policy.Attributes.Created, policy.Attributes.Updated = now, now
	p := pending{Name: name, Op: Operation{Issuer: *policy.Issuer, Status: InProgress, RequestID: newRequestID()}, Policy: *policy, Enable: enabled, Tags: tags}
	if err := s.startOp(ctx, v.Name, name, p); err != nil {
		return Operation{}, err
	}
	s.start(v, name)
	return p.Op, nil
}

// checkNames refuses a certificate whose name an unmanaged key or secret
// already uses, and a name whose certificate is soft-deleted.
func (s *Service) checkNames(ctx context.Context, v *vault.Vault, name string) error {
	if _, _, err := s.certs.GetDeleted(ctx, v.Name, name); err == nil {
		return kind.Map(object.ErrDeleted, name, "")
	}
	if k, _, err := s.keys.Get(ctx, v.Name, name, ""); err == nil && !k.Managed {
		return object.Errorf(object.ErrExists, "", "A key named %s already exists in this vault; a certificate's key would take its name. Choose another certificate name.", name)
	}
	if sec, _, err := s.secrets.Get(ctx, v.Name, name, ""); err == nil && !sec.Managed {
		return object.Errorf(object.ErrExists, "", "A secret named %s already exists in this vault; a certificate's secret would take its name. Choose another certificate name.", name)
	}
	return nil
}

// startOp stores a new operation, refusing to replace one still in
// progress.
func (s *Service) startOp(ctx context.Context, vaultName, name string, p pending) error {
	b, _ := json.Marshal(p)
	k := opKey(vaultName, name)
	return object.Retry(func() error {
		rec, err := s.st.Get(ctx, k)
		var cond barrier.Cond
		switch {
		case errors.Is(err, barrier.ErrNotFound):
			cond = barrier.Cond{Key: k}
		case err != nil:
			return err
		default:
			var old pending
			if json.Unmarshal(rec.Value, &old) == nil && old.Op.Status == InProgress {
				return object.Errorf(object.ErrExists, "", "A certificate operation is already in progress for %s; wait for it, or cancel it (PATCH or DELETE /certificates/%s/pending).", name, name)
			}
			cond = barrier.Cond{Key: k, Rev: rec.Rev}
		}
		return s.st.Apply(ctx, []barrier.Cond{cond}, []barrier.Op{{Key: k, Value: b}})
	})
}

func (s *Service) getOp(ctx context.Context, vaultName, name string) (pending, barrier.Rev, error) {
	rec, err := s.st.Get(ctx, opKey(vaultName, name))
	if errors.Is(err, barrier.ErrNotFound) {
		return pending{}, nil, object.Errorf(object.ErrNotFound, "", "Pending certificate not found: %s", name)
	}
	if err != nil {
		return pending{}, nil, err
	}
	var p pending
	if err := json.Unmarshal(rec.Value, &p); err != nil {
		return pending{}, nil, err
	}
	return p, rec.Rev, nil
}

// GetOperation returns a certificate's creation operation.
func (s *Service) GetOperation(ctx context.Context, v *vault.Vault, name string) (Operation, error) {
	p, _, err := s.getOp(ctx, v.Name, name)
	p.Op.TargetVersion = p.Target
	return p.Op, err
}

// CancelOperation asks an operation in progress to stop.
func (s *Service) CancelOperation(ctx context.Context, v *vault.Vault, name string) (Operation, error) {
	p, rev, err := s.getOp(ctx, v.Name, name)
	if err != nil {
		return Operation{}, err
	}
	if p.Op.Status == InProgress {
		p.Op.CancellationRequested, p.Op.Status, p.Op.StatusDetails = true, Cancelled, "The operation was cancelled; no certificate version was made."
		p.Key = nil
		b, _ := json.Marshal(p)
		if err := s.st.Apply(ctx, []barrier.Cond{{Key: opKey(v.Name, name), Rev: rev}}, []barrier.Op{{Key: opKey(v.Name, name), Value: b}}); err != nil {
			return Operation{}, err
		}
	}
	return p.Op, nil
}

// DeleteOperation removes a certificate's operation record.
func (s *Service) DeleteOperation(ctx context.Context, v *vault.Vault, name string) (Operation, error) {
	p, rev, err := s.getOp(ctx, v.Name, name)
	if err != nil {
		return Operation{}, err
	}
	if err := s.st.Apply(ctx, []barrier.Cond{{Key: opKey(v.Name, name), Rev: rev}}, []barrier.Op{{Key: opKey(v.Name, name), Delete: true}}); err != nil {
		return Operation{}, err
	}
	if p.Op.Status == InProgress {
		p.Op.Status = Cancelled
	}
	return p.Op, nil
}

func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

// start issues a pending certificate in the background.
func (s *Service) start(v *vault.Vault, name string) {
	vv := *v
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.issue(s.ctx, &vv, name); err != nil && s.ctx.Err() == nil {
			s.log.Error("certificate issuance failed", "vault", vv.Name, "certificate", name, "err", err)
		}
	}()
}

// issue runs a pending operation: make the key, then self-sign and commit,
// or (issuer Unknown) store the key and CSR and wait for a merge, or order
// from the policy's ACME issuer and commit what it returns.
func (s *Service) issue(ctx context.Context, v *vault.Vault, name string) error {
	p, _, err := s.getOp(ctx, v.Name, name)
	if err != nil || p.Op.Status != InProgress {
		return err
	}
	m, err := s.keyFor(ctx, v, name, &p.Policy)
	if err != nil {
		return s.failOp(ctx, v, name, err)
	}
	if p.Policy.Issuer.Name == IssuerUnknown {
		if p.Key != nil {
			return nil // already waiting for a merge
		}
		csr, err := makeCSR(&p.Policy, m)
		if err != nil {
			return s.failOp(ctx, v, name, err)
		}
		j := m.PrivateJWK()
		return s.updateOp(ctx, v.Name, name, func(p *pending) {
			p.Key, p.Op.CSR = &j, csr
			p.Op.StatusDetails = "Pending certificate created. Get the CSR signed and merge the certificate (POST /certificates/" + name + "/pending/merge)."
		})
	}
	if p.Policy.Issuer.Name != IssuerSelf {
		return s.issueACME(ctx, v, name, p, m)
	}
	tmpl, err := template(&p.Policy, s.now(), serial())
	if err != nil {
		return s.failOp(ctx, v, name, err)
	}
	signer := m.Signer()
	if signer == nil {
		return s.failOp(ctx, v, name, fmt.Errorf("a %s key cannot sign a certificate", m.Kty))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return s.failOp(ctx, v, name, err)
	}
	leaf, _ := x509.ParseCertificate(der)
	_, err = s.commit(ctx, v, name, certfmt.Bundle{Key: signer, Chain: []*x509.Certificate{leaf}}, &p.Policy, p.Enable, p.Tags, true)
	if err != nil {
		return s.failOp(ctx, v, name, err)
	}
	return nil
}

// keyFor makes the new version's key, or reuses the current one if the
// policy says so.
func (s *Service) keyFor(ctx context.Context, v *vault.Vault, name string, p *Policy) (*keyops.Material, error) {
	if *p.KeyProps.ReuseKey {
		if k, _, err := s.keys.Get(ctx, v.Name, name, ""); err == nil && k.Managed {
			return keyops.FromJWK(k.Data.JWK)
		}
	}
	size := p.KeyProps.KeySize
	if p.KeyProps.Kty == keyops.EC {
		size = 0
	}
	return s.generate(p.KeyProps.Kty, size, p.KeyProps.Crv)
}

func (s *Service) failOp(ctx context.Context, v *vault.Vault, name string, cause error) error {
	if err := s.updateOp(ctx, v.Name, name, func(p *pending) {
		p.Op.Status, p.Key = Failed, nil
		p.Op.Error = &OpError{Code: "CertificateIssuanceFailed", Message: cause.Error()}
	}); err != nil {
		return err
	}
	return cause
}

// updateOp changes an operation that is still in progress, conditionally on
// the revision it read: a cancel or delete that lands meanwhile wins, and
// the change is dropped.
func (s *Service) updateOp(ctx context.Context, vaultName, name string, change func(*pending)) error {
	k := opKey(vaultName, name)
	return object.Retry(func() error {
		p, rev, err := s.getOp(ctx, vaultName, name)
		if err != nil || p.Op.Status != InProgress {
			return nil // gone or no longer running: nothing to do
		}
		change(&p)
		b, _ := json.Marshal(p)
		return s.st.Apply(ctx, []barrier.Cond{{Key: k, Rev: rev}}, []barrier.Op{{Key: k, Value: b}})
	})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

func makeCSR(p *Policy, m *keyops.Material) ([]byte, error) {
	t, err := template(p, time.Now(), big.NewInt(1))
	if err != nil {
		return nil, err
	}
	req := &x509.CertificateRequest{Subject: t.Subject, DNSNames: t.DNSNames, EmailAddresses: t.EmailAddresses, IPAddresses: t.IPAddresses, URIs: t.URIs}
	return x509.CreateCertificateRequest(rand.Reader, req, m.Signer())
}
