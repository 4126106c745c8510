package cert

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strings"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// Issuer is a certificate issuer in Key Vault's JSON shape, with Coffer's
// acme member. Password and the hook secret are write-only: Out drops them.
type Issuer struct {
	ID          string             `json:"id,omitempty"`
	Provider    string             `json:"provider,omitempty"`
	Credentials *IssuerCredentials `json:"credentials,omitempty"`
	OrgDetails  *OrgDetails        `json:"org_details,omitempty"`
	Attributes  *IssuerAttrs       `json:"attributes,omitempty"`
	ACME        *ACMEConfig        `json:"acme,omitempty"`
}

// IssuerCredentials are the account at the provider. For ACME they are the
// external account binding: the key id and its base64url HMAC key.
type IssuerCredentials struct {
	AccountID string `json:"account_id,omitempty"`
	Password  string `json:"pwd,omitempty"`
}

// OrgDetails are the organization as told to the provider. For ACME, the
// administrators' emails become the account's contacts.
type OrgDetails struct {
	ID           string         `json:"id,omitempty"`
	AdminDetails []AdminContact `json:"admin_details,omitempty"`
}

// AdminContact is one administrator of the organization.
type AdminContact struct {
	FirstName string `json:"first_name,omitempty"`
	LastName  string `json:"last_name,omitempty"`
	Email     string `json:"email,omitempty"`
	Phone     string `json:"phone,omitempty"`
}

// IssuerAttrs are an issuer's attributes.
type IssuerAttrs struct {
	Enabled *bool `json:"enabled,omitempty"`
	Created int64 `json:"created,omitempty"`
	Updated int64 `json:"updated,omitempty"`
}

// ACMEConfig is Coffer's extension for provider ACME: where the CA's
// directory is, and how its challenges are answered.
type ACMEConfig struct {
	// DirectoryURL is the CA's ACME directory (RFC 8555 §7.1.1).
	DirectoryURL string `json:"directoryUrl,omitempty"`
	// Challenge is http-01 (answered by the server's HTTP-01 listener) or
	// dns-01 (answered by DNSHookURL).
	Challenge string `json:"challenge,omitempty"`
	// DNSHookURL receives the TXT records to publish and remove, for dns-01.
	DNSHookURL string `json:"dnsHookUrl,omitempty"`
	// DNSHookSecret signs the hook's requests (write-only).
	DNSHookSecret string `json:"dnsHookSecret,omitempty"`
}

// Provider names and ACME challenge types.
const (
	ProviderACME = "ACME"
	HTTP01       = "http-01"
	DNS01        = "dns-01"
)

// issuerRecord is an issuer as stored, sealed: its settings, and the ACME
// account the server registered for it.
type issuerRecord struct {
	Name    string       `json:"name"`
	Issuer  Issuer       `json:"issuer"`
	Account *ACMEAccount `json:"acmeAccount,omitempty"`
}

// ACMEAccount is the account an ACME issuer's orders are made under: its
// key (a PKCS #8 DER, sealed like every stored value) and URL.
type ACMEAccount struct {
	Key []byte `json:"key"`
	URL string `json:"url"`
	// For is what the account was registered with (directory and EAB key
	// id): a change of either registers a new one.
	For string `json:"for"`
}

const (
	issuerPrefix   = "certissuers/"
	contactsPrefix = "certcontacts/"
	maxIssuers     = 100
	maxContacts    = 100
)

func issuerKey(vault, name string) string { return issuerPrefix + vault + "/" + lower(name) }

// Out is the issuer as the API shows it: without its secrets.
func (i Issuer) Out() Issuer {
	if i.Credentials != nil {
		i.Credentials = &IssuerCredentials{AccountID: i.Credentials.AccountID}
	}
	if i.ACME != nil {
		a := *i.ACME
		a.DNSHookSecret = ""
		i.ACME = &a
	}
	return i
}

// issuerNotFound is Key Vault's answer for a missing issuer.
func issuerNotFound(name string) error {
	return &object.Error{Kind: object.ErrNotFound, Code: "CertificateIssuerNotFound", Message: fmt.Sprintf("Issuer not found: %s", name)}
}

// validateIssuer checks an issuer's settings; Check is the egress policy's
// URL check, applied to the ACME URLs.
func (s *Service) validateIssuer(name string, i *Issuer) error {
	if err := kind.ValidateName(name, ""); err != nil {
		return err
	}
	if strings.EqualFold(name, IssuerSelf) || strings.EqualFold(name, IssuerUnknown) {
		return object.Invalidf("%s is a reserved issuer name.", name)
	}
	if i.Provider == "" {
		return object.Invalidf("The issuer needs a provider, such as ACME (Coffer's extension), DigiCert or GlobalSign.")
	}
	if i.OrgDetails != nil {
		for _, a := range i.OrgDetails.AdminDetails {
			if _, err := mail.ParseAddress(a.Email); a.Email != "" && err != nil {
				return object.Invalidf("org_details.admin_details: %q is not an email address.", a.Email)
			}
		}
	}
	if !strings.EqualFold(i.Provider, ProviderACME) {
		if i.ACME != nil {
			return object.Invalidf("The acme settings apply only to provider ACME.")
		}
		return nil
	}
	i.Provider = ProviderACME
	a := i.ACME
	if a == nil || a.DirectoryURL == "" {
		return object.Invalidf("An ACME issuer needs acme.directoryUrl, the CA's directory, such as https://acme-v02.api.letsencrypt.org/directory.")
	}
	if _, err := s.egress.CheckURL(a.DirectoryURL); err != nil {
		return object.Invalidf("acme.directoryUrl: %v.", err)
	}
	switch strings.ToLower(a.Challenge) {
	case "", HTTP01:
		a.Challenge = HTTP01
		if a.DNSHookURL != "" {
			return object.Invalidf("acme.dnsHookUrl applies to challenge dns-01.")
		}
	case DNS01:
		a.Challenge = DNS01
		if a.DNSHookURL == "" {
			return object.Invalidf("Challenge dns-01 needs acme.dnsHookUrl, the hook that publishes the TXT records.")
		}
		if _, err := s.egress.CheckURL(a.DNSHookURL); err != nil {
			return object.Invalidf("acme.dnsHookUrl: %v.", err)
		}
	default:
		return object.Invalidf("acme.challenge %q is not supported: use http-01 or dns-01.", a.Challenge)
	}
	if c := i.Credentials; c != nil && (c.AccountID != "" || c.Password != "") {
		if c.AccountID == "" || c.Password == "" {
			return object.Invalidf("External account binding needs both credentials.account_id (the key id) and credentials.pwd (the base64url HMAC key).")
		}
		if _, err := decodeEAB(c.Password); err != nil {
			return object.Invalidf("credentials.pwd is not a base64url HMAC key.")
		}
	}
	return nil
}

func decodeEAB(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64url")
}

func (s *Service) getIssuer(ctx context.Context, vaultName, name string) (issuerRecord, barrier.Rev, error) {
	rec, err := s.st.Get(ctx, issuerKey(vaultName, name))
	if errors.Is(err, barrier.ErrNotFound) {
		return issuerRecord{}, nil, issuerNotFound(name)
	}
	if err != nil {
		return issuerRecord{}, nil, err
	}
	var ir issuerRecord
	if err := json.Unmarshal(rec.Value, &ir); err != nil {
		return issuerRecord{}, nil, fmt.Errorf("decode issuer %s: %w", name, err)
	}
	return ir, rec.Rev, nil
}

// GetIssuer returns one of a vault's issuers, without its secrets.
func (s *Service) GetIssuer(ctx context.Context, v *vault.Vault, name string) (Issuer, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Issuer{}, err
	}
	ir, _, err := s.getIssuer(ctx, v.Name, name)
	return ir.Issuer.Out(), err
}

// SetIssuer creates or replaces an issuer (PUT); with patch, it merges the
// members given into the existing issuer instead (PATCH), which must exist.
func (s *Service) SetIssuer(ctx context.Context, v *vault.Vault, name string, in Issuer, patch bool) (Issuer, error) {
	var out Issuer
	err := object.Retry(func() error {
		cur, rev, err := s.getIssuer(ctx, v.Name, name)
		exists := err == nil
		switch {
		case err != nil && !errors.Is(err, object.ErrNotFound):
			return err
		case !exists && patch:
			return issuerNotFound(name)
		case !exists:
			n, err := s.countIssuers(ctx, v.Name)
			if err != nil {
				return err
			}
			if n >= maxIssuers {
				return object.Invalidf("Vault %s has %d issuers, the limit.", v.Name, maxIssuers)
			}
			cur = issuerRecord{Name: name}
		}
		next := in
		if patch {
			next = mergeIssuer(cur.Issuer, in)
		}
		next.ID = ""
		if err := s.validateIssuer(name, &next); err != nil {
			return err
		}
		now := s.now().Unix()
		attrs := IssuerAttrs{Enabled: boolp(true), Created: now, Updated: now}
		if exists && cur.Issuer.Attributes != nil {
			attrs.Created, attrs.Enabled = cur.Issuer.Attributes.Created, cur.Issuer.Attributes.Enabled
		}
		if next.Attributes != nil && next.Attributes.Enabled != nil {
			attrs.Enabled = next.Attributes.Enabled
		}
		next.Attributes = &attrs
		cur.Issuer = next
		b, err := json.Marshal(cur)
		if err != nil {
			return err
		}
		cond := barrier.Cond{Key: issuerKey(v.Name, name), Rev: rev}
		if err := s.st.Apply(ctx, []barrier.Cond{cond}, []barrier.Op{{Key: cond.Key, Value: b}}); err != nil {
			return err
		}
		out = next.Out()
		return nil
	})
	return out, err
}

// mergeIssuer lays the members set in patch over cur, one level deep.
func mergeIssuer(cur, patch Issuer) Issuer {
	if patch.Provider != "" {
		cur.Provider = patch.Provider
	}
	if patch.Credentials != nil {
		cur.Credentials = patch.Credentials
	}
	if patch.OrgDetails != nil {
		cur.OrgDetails = patch.OrgDetails
	}
	if patch.Attributes != nil {
		cur.Attributes = &IssuerAttrs{Enabled: patch.Attributes.Enabled}
		if cur.Attributes.Enabled == nil {
			cur.Attributes.Enabled = boolp(true)
		}
	}
	if patch.ACME != nil {
		if cur.ACME == nil {
			cur.ACME = &ACMEConfig{}
		}
		a, p := *cur.ACME, patch.ACME
		for dst, src := range map[*string]string{&a.DirectoryURL: p.DirectoryURL, &a.Challenge: p.Challenge, &a.DNSHookURL: p.DNSHookURL, &a.DNSHookSecret: p.DNSHookSecret} {
			if src != "" {
				*dst = src
			}
		}
		cur.ACME = &a
	}
	return cur
}

func (s *Service) countIssuers(ctx context.Context, vaultName string) (int, error) {
	recs, err := s.st.Scan(ctx, issuerPrefix+vaultName+"/", "", maxIssuers+1)
	return len(recs), err
}

// DeleteIssuer removes an issuer and returns it. Certificates whose policy
// names it can no longer be renewed until it is set again.
func (s *Service) DeleteIssuer(ctx context.Context, v *vault.Vault, name string) (Issuer, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Issuer{}, err
	}
	var out Issuer
	err := object.Retry(func() error {
		ir, rev, err := s.getIssuer(ctx, v.Name, name)
		if err != nil {
			return err
		}
		k := issuerKey(v.Name, name)
		if err := s.st.Apply(ctx, []barrier.Cond{{Key: k, Rev: rev}}, []barrier.Op{{Key: k, Delete: true}}); err != nil {
			return err
		}
		out = ir.Issuer.Out()
		return nil
	})
	return out, err
}

// IssuerItem is an issuer in a list.
type IssuerItem struct {
	Name     string
	Provider string
}

// ListIssuers returns a page of a vault's issuers, by name, and the cursor
// of the next page.
func (s *Service) ListIssuers(ctx context.Context, v *vault.Vault, after string, limit int) ([]IssuerItem, string, error) {
	prefix := issuerPrefix + v.Name + "/"
	recs, err := s.st.Scan(ctx, prefix, prefix+after, limit+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(recs) > limit {
		recs = recs[:limit]
		next = strings.TrimPrefix(recs[limit-1].Key, prefix)
	}
	out := make([]IssuerItem, 0, len(recs))
	for _, rec := range recs {
		var ir issuerRecord
		if err := json.Unmarshal(rec.Value, &ir); err != nil {
			return nil, "", fmt.Errorf("decode %s: %w", rec.Key, err)
		}
		out = append(out, IssuerItem{Name: ir.Name, Provider: ir.Issuer.Provider})
	}
	return out, next, nil
}

// checkIssuer refuses a policy that names an issuer this vault lacks, or
// one Coffer cannot order from.
func (s *Service) checkIssuer(ctx context.Context, v *vault.Vault, p *Policy) error {
	name := p.Issuer.Name
	if name == IssuerSelf || name == IssuerUnknown {
		return nil
	}
	ir, _, err := s.getIssuer(ctx, v.Name, name)
	if errors.Is(err, object.ErrNotFound) {
		return object.Invalidf("Issuer %s is not configured in vault %s: create it (PUT /certificates/issuers/%s), or use Self or Unknown.", name, v.Name, name)
	}
	if err != nil {
		return err
	}
	p.Issuer.Name = ir.Name
	if ir.Issuer.Provider != ProviderACME {
		return object.Invalidf("Issuer %s's provider %s is not one Coffer can order from: Coffer orders from ACME CAs (provider ACME), and makes CSRs for others (issuer Unknown).", ir.Name, ir.Issuer.Provider)
	}
	if a := ir.Issuer.Attributes; a != nil && a.Enabled != nil && !*a.Enabled {
		return object.Invalidf("Issuer %s is disabled.", ir.Name)
	}
	return nil
}

// Contacts are a vault's certificate contacts, in Key Vault's shape.
type Contacts struct {
	ID       string    `json:"id,omitempty"`
	Contacts []Contact `json:"contacts"`
}

// Contact is one person told of certificate events.
type Contact struct {
	Email string `json:"email,omitempty"`
	Name  string `json:"name,omitempty"`
	Phone string `json:"phone,omitempty"`
}

// GetContacts returns the vault's certificate contacts (none is an empty
// list, as Key Vault answers).
func (s *Service) GetContacts(ctx context.Context, v *vault.Vault) (Contacts, error) {
	rec, err := s.st.Get(ctx, contactsPrefix+v.Name)
	if errors.Is(err, barrier.ErrNotFound) {
		return Contacts{Contacts: []Contact{}}, nil
	}
	if err != nil {
		return Contacts{}, err
	}
	var c Contacts
	if err := json.Unmarshal(rec.Value, &c); err != nil {
		return Contacts{}, err
	}
	return c, nil
}

// SetContacts replaces the vault's certificate contacts.
func (s *Service) SetContacts(ctx context.Context, v *vault.Vault, in Contacts) (Contacts, error) {
	if len(in.Contacts) == 0 {
		return Contacts{}, object.Invalidf("Give at least one contact in 'contacts'; delete the contacts to remove them all.")
	}
	if len(in.Contacts) > maxContacts {
		return Contacts{}, object.Invalidf("%d contacts given; the limit is %d.", len(in.Contacts), maxContacts)
	}
	for i, c := range in.Contacts {
		if _, err := mail.ParseAddress(c.Email); err != nil {
			return Contacts{}, object.Invalidf("contacts[%d].email %q is not an email address.", i, c.Email)
		}
	}
	in.ID = ""
	b, err := json.Marshal(in)
	if err != nil {
		return Contacts{}, err
	}
	if err := s.st.Apply(ctx, nil, []barrier.Op{{Key: contactsPrefix + v.Name, Value: b}}); err != nil {
		return Contacts{}, err
	}
	return in, nil
}

// DeleteContacts removes the vault's contacts and returns them.
func (s *Service) DeleteContacts(ctx context.Context, v *vault.Vault) (Contacts, error) {
	var out Contacts
	err := object.Retry(func() error {
		rec, err := s.st.Get(ctx, contactsPrefix+v.Name)
		if errors.Is(err, barrier.ErrNotFound) {
			out = Contacts{Contacts: []Contact{}}
			return nil
		}
		if err != nil {
			return err
		}
		if err := json.Unmarshal(rec.Value, &out); err != nil {
			return err
		}
		return s.st.Apply(ctx, []barrier.Cond{{Key: rec.Key, Rev: rec.Rev}}, []barrier.Op{{Key: rec.Key, Delete: true}})
	})
	return out, err
}
