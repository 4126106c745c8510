package cert

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
)

// Policy is a certificate policy in Key Vault's JSON shape.
type Policy struct {
	ID              string           `json:"id,omitempty"`
	KeyProps        *KeyProps        `json:"key_props,omitempty"`
	SecretProps     *SecretProps     `json:"secret_props,omitempty"`
	X509Props       *X509Props       `json:"x509_props,omitempty"`
	LifetimeActions []LifetimeAction `json:"lifetime_actions,omitempty"`
	Issuer          *IssuerParams    `json:"issuer,omitempty"`
	Attributes      *PolicyAttrs     `json:"attributes,omitempty"`
}

// KeyProps describe the certificate's key.
type KeyProps struct {
	Exportable *bool  `json:"exportable,omitempty"`
	Kty        string `json:"kty,omitempty"`
	KeySize    int    `json:"key_size,omitempty"`
	ReuseKey   *bool  `json:"reuse_key,omitempty"`
	Crv        string `json:"crv,omitempty"`
}

// SecretProps say how the managed secret holds the certificate.
type SecretProps struct {
	ContentType string `json:"contentType,omitempty"`
}

// X509Props describe the certificate itself.
type X509Props struct {
	Subject        string   `json:"subject,omitempty"`
	SANs           *SANs    `json:"sans,omitempty"`
	EKUs           []string `json:"ekus,omitempty"`
	KeyUsage       []string `json:"key_usage,omitempty"`
	ValidityMonths int      `json:"validity_months,omitempty"`
}

// SANs are the subject alternative names.
type SANs struct {
	DNSNames    []string `json:"dns_names,omitempty"`
	Emails      []string `json:"emails,omitempty"`
	UPNs        []string `json:"upns,omitempty"`
	IPAddresses []string `json:"ipAddresses,omitempty"`
	URIs        []string `json:"uris,omitempty"`
}

// LifetimeAction renews or warns at a point of a certificate's life.
type LifetimeAction struct {
	Trigger struct {
		LifetimePercentage int `json:"lifetime_percentage,omitempty"`
		DaysBeforeExpiry   int `json:"days_before_expiry,omitempty"`
	} `json:"trigger"`
	Action struct {
		ActionType string `json:"action_type"`
	} `json:"action"`
}

// IssuerParams name the issuer.
type IssuerParams struct {
	Name             string `json:"name,omitempty"`
	CertificateType  string `json:"cty,omitempty"`
	CertTransparency *bool  `json:"cert_transparency,omitempty"`
}

// PolicyAttrs are the policy's own attributes.
type PolicyAttrs struct {
	Enabled *bool `json:"enabled,omitempty"`
	Created int64 `json:"created,omitempty"`
	Updated int64 `json:"updated,omitempty"`
}

// Issuer names Coffer knows.
const (
	IssuerSelf    = "Self"
	IssuerUnknown = "Unknown"
	AutoRenew     = "AutoRenew"
	EmailContacts = "EmailContacts"
)

// Default EKUs: TLS server and client authentication, as Azure's default.
var defaultEKUs = []string{"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}

var keyUsages = map[string]x509.KeyUsage{
	"digitalSignature": x509.KeyUsageDigitalSignature, "nonRepudiation": x509.KeyUsageContentCommitment,
	"keyEncipherment": x509.KeyUsageKeyEncipherment, "dataEncipherment": x509.KeyUsageDataEncipherment,
	"keyAgreement": x509.KeyUsageKeyAgreement, "keyCertSign": x509.KeyUsageCertSign, "cRLSign": x509.KeyUsageCRLSign,
	"encipherOnly": x509.KeyUsageEncipherOnly, "decipherOnly": x509.KeyUsageDecipherOnly,
}

var knownEKUs = map[string]x509.ExtKeyUsage{
	"1.3.6.1.5.5.7.3.1": x509.ExtKeyUsageServerAuth, "1.3.6.1.5.5.7.3.2": x509.ExtKeyUsageClientAuth,
	"1.3.6.1.5.5.7.3.3": x509.ExtKeyUsageCodeSigning, "1.3.6.1.5.5.7.3.4": x509.ExtKeyUsageEmailProtection,
	"1.3.6.1.5.5.7.3.8": x509.ExtKeyUsageTimeStamping, "1.3.6.1.5.5.7.3.9": x509.ExtKeyUsageOCSPSigning,
}

func boolp(b bool) *bool { return &b }

// Normalize fills Azure's defaults into p and validates it. A nil p is an
// error: a first version needs a policy.
func Normalize(p *Policy) error {
	if p == nil {
		return object.Invalidf("A certificate needs a policy: give x509_props (a subject or SANs), and optionally key_props, secret_props and issuer.")
	}
	if p.Issuer == nil {
		p.Issuer = &IssuerParams{Name: IssuerSelf}
	}
	switch strings.ToLower(p.Issuer.Name) {
	case "self", "":
		p.Issuer.Name = IssuerSelf
	case "unknown":
		p.Issuer.Name = IssuerUnknown
	default:
		// A named issuer: the service checks that the vault has it.
		if !object.ValidName(p.Issuer.Name) {
			return object.Invalidf("issuer.name %q is not an issuer name: use Self, Unknown, or the name of one of this vault's issuers (letters, digits and hyphens).", p.Issuer.Name)
		}
	}
	if p.KeyProps == nil {
		p.KeyProps = &KeyProps{}
	}
	k := p.KeyProps
	if k.Kty == "" {
		k.Kty = keyops.RSA
	}
	switch k.Kty {
	case keyops.RSA:
		if k.KeySize == 0 {
			k.KeySize = 2048
		}
		if !slices.Contains(keyops.RSASizes, k.KeySize) {
			return object.Invalidf("key_props.key_size %d is not supported: use 2048, 3072 or 4096.", k.KeySize)
		}
	case keyops.EC:
		if k.Crv == "" {
			k.Crv = keyops.P256
		}
		if !slices.Contains([]string{keyops.P256, keyops.P384, keyops.P521}, k.Crv) {
			return object.Invalidf("key_props.crv %q is not supported for certificates: use P-256, P-384 or P-521.", k.Crv)
		}
	default:
		return object.Invalidf("key_props.kty %q is not supported for certificates: use RSA or EC (software-protected).", k.Kty)
	}
	if k.Exportable == nil {
		k.Exportable = boolp(true)
	}
	if !*k.Exportable {
		return object.Invalidf("Non-exportable certificate keys need a hardware security module; Coffer keys are software-protected, so use exportable true.")
	}
	if k.ReuseKey == nil {
		k.ReuseKey = boolp(false)
	}
	if p.SecretProps == nil {
		p.SecretProps = &SecretProps{}
	}
	if p.SecretProps.ContentType == "" {
		p.SecretProps.ContentType = certfmt.PFX
	}
	if p.SecretProps.ContentType != certfmt.PFX && p.SecretProps.ContentType != certfmt.PEM {
		return object.Invalidf("secret_props.contentType %q is not supported: use %s or %s.", p.SecretProps.ContentType, certfmt.PFX, certfmt.PEM)
	}
	if p.X509Props == nil {
		p.X509Props = &X509Props{}
	}
	x := p.X509Props
	if x.ValidityMonths == 0 {
		x.ValidityMonths = 12
	}
	if x.ValidityMonths < 1 || x.ValidityMonths > 1200 {
		return object.Invalidf("x509_props.validity_months must be 1 to 1200, got %d.", x.ValidityMonths)
	}
	if x.EKUs == nil {
		x.EKUs = slices.Clone(defaultEKUs)
	}
	for _, e := range x.EKUs {
		if _, err := parseOID(e); err != nil {
			return object.Invalidf("x509_props.ekus: %q is not an OID such as 1.3.6.1.5.5.7.3.1.", e)
		}
	}
	if x.KeyUsage == nil {
		x.KeyUsage = []string{"digitalSignature"}
		if k.Kty == keyops.RSA {
			x.KeyUsage = append(x.KeyUsage, "keyEncipherment")
		}
	}
	for _, u := range x.KeyUsage {
		if _, ok := keyUsages[u]; !ok {
			return object.Invalidf("x509_props.key_usage %q is unknown: use %s.", u, strings.Join(sortedKeys(keyUsages), ", "))
		}
	}
	if _, err := ParseSubject(x.Subject); err != nil {
		return err
	}
	if x.Subject == "" && (x.SANs == nil || len(x.SANs.DNSNames)+len(x.SANs.Emails)+len(x.SANs.IPAddresses)+len(x.SANs.URIs) == 0) {
		return object.Invalidf("x509_props needs a subject (such as CN=example.com) or subject alternative names.")
	}
	if s := x.SANs; s != nil {
		// An empty list says what an absent one does; store one form, so
		// that a policy read back normalizes to itself.
		for _, l := range []*[]string{&s.DNSNames, &s.Emails, &s.UPNs, &s.IPAddresses, &s.URIs} {
			if len(*l) == 0 {
				*l = nil
			}
		}
		if len(s.UPNs) > 0 {
			return object.Invalidf("x509_props.sans.upns is not supported yet; use dns_names, emails, ipAddresses or uris.")
		}
		// X.509 writes these names as IA5Strings: ASCII only (an
		// internationalized name goes in its punycode form, xn--...).
		for _, f := range []struct {
			field string
			names []string
		}{{"dns_names", s.DNSNames}, {"emails", s.Emails}, {"uris", s.URIs}} {
			field := f.field
			for _, n := range f.names {
				if n == "" || strings.IndexFunc(n, func(r rune) bool { return r > unicode.MaxASCII }) >= 0 {
					return object.Invalidf("x509_props.sans.%s: %q is empty or not ASCII; write internationalized names in their punycode form (xn--...).", field, n)
				}
			}
		}
		for _, ip := range s.IPAddresses {
			if net.ParseIP(ip) == nil {
				return object.Invalidf("x509_props.sans.ipAddresses: %q is not an IP address.", ip)
			}
		}
		for _, u := range s.URIs {
			if pu, err := url.Parse(u); err != nil || pu.Scheme == "" {
				return object.Invalidf("x509_props.sans.uris: %q is not an absolute URI.", u)
			}
		}
	}
	if len(p.LifetimeActions) > 1 {
		return object.Invalidf("Give at most one lifetime action.")
	}
	if p.LifetimeActions == nil && p.Issuer.Name != IssuerUnknown {
		var la LifetimeAction
		la.Trigger.LifetimePercentage, la.Action.ActionType = 80, AutoRenew
		p.LifetimeActions = []LifetimeAction{la}
	}
	for _, la := range p.LifetimeActions {
		t := la.Trigger
		if (t.LifetimePercentage == 0) == (t.DaysBeforeExpiry == 0) || t.LifetimePercentage < 0 || t.LifetimePercentage > 99 || t.DaysBeforeExpiry < 0 {
			return object.Invalidf("A lifetime action's trigger needs exactly one of lifetime_percentage (1-99) and days_before_expiry.")
		}
		switch la.Action.ActionType {
		case AutoRenew:
			if p.Issuer.Name == IssuerUnknown {
				return object.Invalidf("AutoRenew needs an issuer Coffer can order from (Self, or an issuer of this vault); a certificate of issuer Unknown is signed outside it, so renew it with a new CSR and merge.")
			}
		case EmailContacts:
		default:
			return object.Invalidf("Lifetime action %q is unknown: use AutoRenew or EmailContacts.", la.Action.ActionType)
		}
	}
	if p.Attributes == nil {
		p.Attributes = &PolicyAttrs{Enabled: boolp(true)}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// parseOID reads a dotted OID and refuses what DER cannot encode, so that
// a policy it accepts can always be issued: X.690 packs the first two arcs
// into one number, which needs the first arc to be 0, 1 or 2 and, under 0
// and 1, the second to be below 40. Arcs are plain decimals (no sign, no
// leading zero) so that the OID reads back from a certificate as written,
// and at most 2^31-1 so that 40*first+second cannot overflow.
func parseOID(s string) (asn1.ObjectIdentifier, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return nil, fmt.Errorf("short OID")
	}
	oid := make(asn1.ObjectIdentifier, len(parts))
	for i, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" || (len(p) > 1 && p[0] == '0') {
			return nil, fmt.Errorf("bad OID arc %q", p)
		}
		n, err := strconv.ParseInt(p, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad OID arc %q", p)
		}
		oid[i] = int(n)
	}
	if oid[0] > 2 || (oid[0] < 2 && oid[1] >= 40) {
		return nil, fmt.Errorf("OID %q starts with arcs DER cannot encode", s)
	}
	return oid, nil
}

var emailOID = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}

// ParseSubject reads an X.500 name such as "CN=example.com, O=Contoso, C=US".
func ParseSubject(s string) (pkix.Name, error) {
	var n pkix.Name
	if strings.TrimSpace(s) == "" {
		return n, nil
	}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			i++
		case s[i] == ',' || s[i] == ';':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	parts = append(parts, cur.String())
	for _, part := range parts {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		k, v = strings.ToUpper(strings.TrimSpace(k)), strings.TrimSpace(v)
		if !ok || v == "" {
			return n, object.Invalidf("x509_props.subject %q: %q is not an attribute=value pair.", s, part)
		}
		switch k {
		case "CN":
			n.CommonName = v
		case "O":
			n.Organization = append(n.Organization, v)
		case "OU":
			n.OrganizationalUnit = append(n.OrganizationalUnit, v)
		case "L":
			n.Locality = append(n.Locality, v)
		case "ST", "S":
			n.Province = append(n.Province, v)
		case "C":
			n.Country = append(n.Country, v)
		case "STREET":
			n.StreetAddress = append(n.StreetAddress, v)
		case "POSTALCODE":
			n.PostalCode = append(n.PostalCode, v)
		case "SERIALNUMBER":
			n.SerialNumber = v
		case "E", "EMAIL", "EMAILADDRESS":
			n.ExtraNames = append(n.ExtraNames, pkix.AttributeTypeAndValue{Type: emailOID, Value: v})
		default:
			return n, object.Invalidf("x509_props.subject %q: attribute %s is not supported; use CN, O, OU, L, ST, C, STREET, POSTALCODE, SERIALNUMBER or E.", s, k)
		}
	}
	return n, nil
}

// template builds the certificate a policy describes, valid from now.
func template(p *Policy, now time.Time, serial *big.Int) (*x509.Certificate, error) {
	x := p.X509Props
	subject, err := ParseSubject(x.Subject)
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber: serial, Subject: subject,
		NotBefore: now.Add(-time.Minute), NotAfter: now.AddDate(0, x.ValidityMonths, 0),
		BasicConstraintsValid: true,
	}
	for _, u := range x.KeyUsage {
		t.KeyUsage |= keyUsages[u]
	}
	for _, e := range x.EKUs {
		if known, ok := knownEKUs[e]; ok {
			t.ExtKeyUsage = append(t.ExtKeyUsage, known)
		} else {
			oid, _ := parseOID(e)
			t.UnknownExtKeyUsage = append(t.UnknownExtKeyUsage, oid)
		}
	}
	if s := x.SANs; s != nil {
		t.DNSNames, t.EmailAddresses = s.DNSNames, s.Emails
		for _, ip := range s.IPAddresses {
			t.IPAddresses = append(t.IPAddresses, net.ParseIP(ip))
		}
		for _, u := range s.URIs {
			pu, _ := url.Parse(u)
			t.URIs = append(t.URIs, pu)
		}
	}
	return t, nil
}

// policyOf derives the policy of an imported certificate from the
// certificate itself; only the secret's content type comes from the caller.
func policyOf(c *x509.Certificate, contentType string) *Policy {
	p := &Policy{Issuer: &IssuerParams{Name: IssuerUnknown}, SecretProps: &SecretProps{ContentType: contentType}}
	p.KeyProps = &KeyProps{Exportable: boolp(true), ReuseKey: boolp(false)}
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		p.KeyProps.Kty, p.KeyProps.KeySize = keyops.RSA, k.Size()*8
	case *ecdsa.PublicKey:
		p.KeyProps.Kty = keyops.EC
		p.KeyProps.Crv = map[int]string{256: keyops.P256, 384: keyops.P384, 521: keyops.P521}[k.Curve.Params().BitSize]
	}
	x := &X509Props{Subject: c.Subject.String(), ValidityMonths: max(1, int(c.NotAfter.Sub(c.NotBefore).Hours()/24/30))}
	for name, bit := range keyUsages {
		if c.KeyUsage&bit != 0 {
			x.KeyUsage = append(x.KeyUsage, name)
		}
	}
	slices.Sort(x.KeyUsage)
	for _, e := range c.ExtKeyUsage {
		for oid, known := range knownEKUs {
			if known == e {
				x.EKUs = append(x.EKUs, oid)
			}
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		x.EKUs = append(x.EKUs, oid.String())
	}
	if len(c.DNSNames)+len(c.EmailAddresses)+len(c.IPAddresses)+len(c.URIs) > 0 {
		x.SANs = &SANs{DNSNames: c.DNSNames, Emails: c.EmailAddresses}
		for _, ip := range c.IPAddresses {
			x.SANs.IPAddresses = append(x.SANs.IPAddresses, ip.String())
		}
		for _, u := range c.URIs {
			x.SANs.URIs = append(x.SANs.URIs, u.String())
		}
	}
	p.X509Props = x
	p.Attributes = &PolicyAttrs{Enabled: boolp(true)}
	return p
}
