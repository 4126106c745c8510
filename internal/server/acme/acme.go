// Package acme orders certificates from ACME CAs (RFC 8555) for issuers of
// Coffer's provider ACME. It registers the issuer's account (with external
// account binding when the CA wants one), answers http-01 challenges
// through a token store that every replica's HTTP-01 listener reads, and
// dns-01 challenges through a webhook the operator runs, then finalizes
// the order with a CSR for the certificate's own key.
package acme

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/crypto/acme"

	"github.com/cofferhq/coffer/internal/protocol/webhooksig"
)

// Challenge types.
const (
	HTTP01 = "http-01"
	DNS01  = "dns-01"
)

// Tokens keeps the http-01 key authorizations where every replica's
// HTTP-01 listener can read them.
type Tokens interface {
	PutToken(ctx context.Context, token, keyAuth string) error
	DeleteToken(ctx context.Context, token string) error
}

// Request is one order.
type Request struct {
	DirectoryURL string
	Challenge    string // HTTP01 or DNS01
	// DNSHookURL receives the TXT records of dns-01, signed with
	// DNSHookSecret when it is set.
	DNSHookURL, DNSHookSecret string
	// EABKeyID and EABKey are the external account binding, if any.
	EABKeyID string
	EABKey   []byte
	// Contacts are the account's emails.
	Contacts []string
	// AccountKey (PKCS #8) and AccountURL are an account registered before;
	// empty, a new one is registered.
	AccountKey []byte
	AccountURL string

	// Key is the certificate's key, which signs the CSR.
	Key      crypto.Signer
	Subject  pkix.Name
	DNSNames []string
	IPs      []net.IP
}

// Result is an order's outcome: the chain, leaf first, and the account it
// was made under (set even when the order failed after registering, so
// the caller keeps the account).
type Result struct {
	Chain      [][]byte
	AccountKey []byte
	AccountURL string
}

// Orderer places orders.
type Orderer struct {
	client *http.Client
	tokens Tokens
	log    *slog.Logger
}

// New returns an orderer that reaches CAs and hooks with client.
func New(client *http.Client, tokens Tokens, log *slog.Logger) *Orderer {
	if log == nil {
		log = slog.Default()
	}
	return &Orderer{client: client, tokens: tokens, log: log}
}

// Order registers (if needed), authorizes every identifier, and returns
// the issued chain.
func (o *Orderer) Order(ctx context.Context, r Request) (Result, error) {
	var res Result
	key, err := accountKey(r.AccountKey)
	if err != nil {
		return res, err
	}
	res.AccountKey, _ = x509.MarshalPKCS8PrivateKey(key)
	cl := &acme.Client{Key: key, DirectoryURL: r.DirectoryURL, HTTPClient: o.client, UserAgent: "coffer"}
	if r.AccountURL != "" {
		cl.KID = acme.KeyID(r.AccountURL)
		res.AccountURL = r.AccountURL
	} else {
		acct := &acme.Account{}
		for _, c := range r.Contacts {
			acct.Contact = append(acct.Contact, "mailto:"+c)
		}
		if r.EABKeyID != "" {
			acct.ExternalAccountBinding = &acme.ExternalAccountBinding{KID: r.EABKeyID, Key: r.EABKey}
		}
		a, err := cl.Register(ctx, acct, acme.AcceptTOS)
		if errors.Is(err, acme.ErrAccountAlreadyExists) {
			a, err = cl.GetReg(ctx, "")
		}
		if err != nil {
			return res, fmt.Errorf("register an account at %s: %w", r.DirectoryURL, err)
		}
		res.AccountURL = a.URI
	}
	var ids []acme.AuthzID
	for _, n := range r.DNSNames {
		ids = append(ids, acme.AuthzID{Type: "dns", Value: n})
	}
	for _, ip := range r.IPs {
		ids = append(ids, acme.AuthzID{Type: "ip", Value: ip.String()})
	}
	if len(ids) == 0 {
		return res, errors.New("the certificate names no DNS name or IP address to order")
	}
	order, err := cl.AuthorizeOrder(ctx, ids)
	if err != nil {
		return res, fmt.Errorf("create the order: %w", err)
	}
	for _, u := range order.AuthzURLs {
		if err := o.authorize(ctx, cl, u, r); err != nil {
			return res, err
		}
	}
	if order, err = cl.WaitOrder(ctx, order.URI); err != nil {
		return res, fmt.Errorf("wait for the order to be ready: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: r.Subject, DNSNames: r.DNSNames, IPAddresses: r.IPs}, r.Key)
	if err != nil {
		return res, fmt.Errorf("make the CSR: %w", err)
	}
	chain, _, err := cl.CreateCertFromOrder(ctx, order, csr, true)
	if err != nil {
		return res, fmt.Errorf("finalize the order: %w", err)
	}
	res.Chain = chain
	return res, nil
}

// authorize answers one authorization's challenge of the issuer's type
// and waits for the CA to validate it.
func (o *Orderer) authorize(ctx context.Context, cl *acme.Client, url string, r Request) error {
	z, err := cl.GetAuthorization(ctx, url)
	if err != nil {
		return fmt.Errorf("read authorization: %w", err)
	}
	if z.Status == acme.StatusValid {
		return nil
	}
	var chal *acme.Challenge
	for _, c := range z.Challenges {
		if c.Type == r.Challenge {
			chal = c
		}
	}
	if chal == nil {
		return fmt.Errorf("the CA offers no %s challenge for %s", r.Challenge, z.Identifier.Value)
	}
	cleanup, err := o.present(ctx, cl, chal, z.Identifier.Value, r)
	if err != nil {
		return err
	}
	defer cleanup()
	if _, err := cl.Accept(ctx, chal); err != nil {
		return fmt.Errorf("accept the %s challenge for %s: %w", r.Challenge, z.Identifier.Value, err)
	}
	if _, err := cl.WaitAuthorization(ctx, z.URI); err != nil {
		return fmt.Errorf("the CA did not validate %s by %s: %w", z.Identifier.Value, r.Challenge, err)
	}
	return nil
}

// present publishes a challenge's answer and returns how to remove it.
func (o *Orderer) present(ctx context.Context, cl *acme.Client, chal *acme.Challenge, ident string, r Request) (func(), error) {
	switch r.Challenge {
	case HTTP01:
		ka, err := cl.HTTP01ChallengeResponse(chal.Token)
		if err != nil {
			return nil, err
		}
		if err := o.tokens.PutToken(ctx, chal.Token, ka); err != nil {
			return nil, fmt.Errorf("store the http-01 answer: %w", err)
		}
		return func() {
			if err := o.tokens.DeleteToken(context.WithoutCancel(ctx), chal.Token); err != nil {
				o.log.Warn("an http-01 answer was not removed; it expires with its order", "err", err)
			}
		}, nil
	case DNS01:
		value, err := cl.DNS01ChallengeRecord(chal.Token)
		if err != nil {
			return nil, err
		}
		rec := HookRecord{FQDN: "_acme-challenge." + strings.TrimPrefix(ident, "*.") + ".", Value: value, Domain: ident}
		rec.Action = "present"
		if err := o.hook(ctx, r, rec); err != nil {
			return nil, err
		}
		return func() {
			rec.Action = "cleanup"
			if err := o.hook(context.WithoutCancel(ctx), r, rec); err != nil {
				o.log.Warn("the DNS hook did not remove a TXT record", "fqdn", rec.FQDN, "err", err)
			}
		}, nil
	}
	return nil, fmt.Errorf("challenge %q is not supported", r.Challenge)
}

// HookRecord is the body of a DNS hook request: publish (present) or
// remove (cleanup) the TXT record Value at FQDN, for Domain's dns-01.
type HookRecord struct {
	Action string `json:"action"`
	FQDN   string `json:"fqdn"`
	Value  string `json:"value"`
	Domain string `json:"domain"`
}

// hook calls the DNS hook; it must answer 2xx once the record is
// published (or removed).
func (o *Orderer) hook(ctx context.Context, r Request, rec HookRecord) error {
	body, _ := json.Marshal(rec)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.DNSHookURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.DNSHookSecret != "" {
		req.Header.Set(webhooksig.Header, webhooksig.Sign([]byte(r.DNSHookSecret), time.Now(), body))
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return fmt.Errorf("DNS hook (%s): %w", rec.Action, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("DNS hook (%s) answered %s", rec.Action, resp.Status)
	}
	return nil
}

func accountKey(pkcs8 []byte) (crypto.Signer, error) {
	if len(pkcs8) == 0 {
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	k, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		return nil, fmt.Errorf("the stored ACME account key is damaged: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("the stored ACME account key cannot sign")
	}
	return s, nil
}

// HTTP01Handler answers http-01 challenges from lookup, which returns a
// token's key authorization.
func HTTP01Handler(lookup func(ctx context.Context, token string) (string, error)) http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET /.well-known/acme-challenge/{token}", func(w http.ResponseWriter, r *http.Request) {
		ka, err := lookup(r.Context(), r.PathValue("token"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, ka)
	})
	return m
}
