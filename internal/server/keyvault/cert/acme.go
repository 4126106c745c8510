package cert

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/acme"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// orderTimeout bounds one ACME order, from registration to the chain.
const orderTimeout = 10 * time.Minute

// UseACME sets the orderer that issuers of provider ACME order through;
// without one, their operations fail.
func (s *Service) UseACME(o *acme.Orderer) { s.acme = o }

// issueACME orders the pending certificate from its ACME issuer, with the
// key m, and commits the chain the CA returns.
func (s *Service) issueACME(ctx context.Context, v *vault.Vault, name string, p pending, m *keyops.Material) error {
	if s.acme == nil {
		return s.failOp(ctx, v, name, errors.New("this server orders from no ACME CA"))
	}
	ir, _, err := s.getIssuer(ctx, v.Name, p.Policy.Issuer.Name)
	if err != nil {
		return s.failOp(ctx, v, name, fmt.Errorf("issuer %s: %w", p.Policy.Issuer.Name, err))
	}
	iss := ir.Issuer
	if iss.Provider != ProviderACME || iss.ACME == nil {
		return s.failOp(ctx, v, name, fmt.Errorf("issuer %s is not an ACME issuer", ir.Name))
	}
	signer := m.Signer()
	if signer == nil {
		return s.failOp(ctx, v, name, fmt.Errorf("a %s key cannot sign a CSR", m.Kty))
	}
	tmpl, err := template(&p.Policy, s.now(), serial())
	if err != nil {
		return s.failOp(ctx, v, name, err)
	}
	if len(tmpl.EmailAddresses) > 0 || len(tmpl.URIs) > 0 {
		return s.failOp(ctx, v, name, errors.New("an ACME CA certifies DNS names and IP addresses only; remove the email and URI SANs"))
	}
	dns := slices.Clone(tmpl.DNSNames)
	if cn := tmpl.Subject.CommonName; cn != "" && net.ParseIP(cn) == nil && !slices.Contains(dns, cn) {
		dns = append([]string{cn}, dns...) // ACME CAs certify the CN only as a SAN
	}
	req := acme.Request{
		DirectoryURL: iss.ACME.DirectoryURL, Challenge: iss.ACME.Challenge,
		DNSHookURL: iss.ACME.DNSHookURL, DNSHookSecret: iss.ACME.DNSHookSecret,
		Key: signer, Subject: tmpl.Subject, DNSNames: dns, IPs: tmpl.IPAddresses,
	}
	if c := iss.Credentials; c != nil && c.AccountID != "" {
		req.EABKeyID = c.AccountID
		if req.EABKey, err = decodeEAB(c.Password); err != nil {
			return s.failOp(ctx, v, name, errors.New("the issuer's EAB key is not base64url"))
		}
	}
	if o := iss.OrgDetails; o != nil {
		for _, a := range o.AdminDetails {
			if a.Email != "" {
				req.Contacts = append(req.Contacts, a.Email)
			}
		}
	}
	// An account is registered once per directory and binding, and kept
	// in the issuer, sealed, so renewals order under the same account.
	accountFor := req.DirectoryURL + " " + req.EABKeyID
	if a := ir.Account; a != nil && a.For == accountFor {
		req.AccountKey, req.AccountURL = a.Key, a.URL
	}
	s.updateOp(ctx, v.Name, name, func(p *pending) {
		p.Op.StatusDetails = "Ordering the certificate from " + req.DirectoryURL + " (" + req.Challenge + ")."
	})
	octx, cancel := context.WithTimeout(ctx, orderTimeout)
	res, err := s.acme.Order(octx, req)
	cancel()
	if res.AccountURL != "" && res.AccountURL != req.AccountURL {
		if serr := s.saveAccount(ctx, v.Name, ir.Name, &ACMEAccount{Key: res.AccountKey, URL: res.AccountURL, For: accountFor}); serr != nil {
			s.log.Warn("the ACME account was not stored; the next order registers another", "vault", v.Name, "issuer", ir.Name, "err", serr)
		}
	}
	if err != nil {
		return s.failOp(ctx, v, name, err)
	}
	var certs []*x509.Certificate
	for _, der := range res.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return s.failOp(ctx, v, name, fmt.Errorf("the CA returned a certificate that does not parse: %w", err))
		}
		certs = append(certs, c)
	}
	b, err := certfmt.Assemble(signer, certs)
	if err != nil {
		return s.failOp(ctx, v, name, fmt.Errorf("the CA's certificate does not match the key: %w", err))
	}
	if _, err := s.commit(ctx, v, name, b, &p.Policy, p.Enable, p.Tags, true); err != nil {
		return s.failOp(ctx, v, name, err)
	}
	return nil
}

// saveAccount stores the ACME account an issuer's orders go under.
func (s *Service) saveAccount(ctx context.Context, vaultName, issuer string, a *ACMEAccount) error {
	return object.Retry(func() error {
		ir, rev, err := s.getIssuer(ctx, vaultName, issuer)
		if err != nil {
			return err
		}
		ir.Account = a
		b, err := json.Marshal(ir)
		if err != nil {
			return err
		}
		k := issuerKey(vaultName, issuer)
		return s.st.Apply(ctx, []barrier.Cond{{Key: k, Rev: rev}}, []barrier.Op{{Key: k, Value: b}})
	})
}
