package nodeagent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// credential returns how to get a token as id: the node credential acting
// as a user-assigned identity, or a service principal's own secret or
// certificate read from the Secret its clientPassword names.
func (a *Agent) credential(ctx context.Context, id podidentity.AzureIdentity) (authclient.Credential, error) {
	// Validate's messages name only the object's own fields, which the
	// pod's namespace holds: they are sent as they are.
	if err := id.Validate(); err != nil {
		return authclient.Credential{}, fail(http.StatusBadRequest, "invalid_request", "%v", err)
	}
	if id.Spec.Type == podidentity.UserAssignedMSI {
		if id.Spec.ClientID != "" {
			return a.managed(authclient.Selector{ClientID: id.Spec.ClientID}), nil
		}
		return a.managed(authclient.Selector{ResourceID: id.Spec.ResourceID}), nil
	}
	ref := id.Spec.ClientPassword
	ns := ref.Namespace
	if ns == "" {
		ns = id.Namespace
	}
	// A Secret of another namespace would let whoever can write
	// AzureIdentities in one namespace use credentials of another.
	if ns != id.Namespace {
		return authclient.Credential{}, fail(http.StatusForbidden, "unauthorized_client", "AzureIdentity %s/%s names clientPassword Secret %s/%s in another namespace: the Secret must be in the identity's namespace", id.Namespace, id.Name, ns, ref.Name)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sec, err := a.cfg.Cluster.Secret(sctx, ns, ref.Name)
	switch {
	case apierrors.IsNotFound(err):
		return authclient.Credential{}, fail(http.StatusBadRequest, "invalid_request", "Secret %s/%s of AzureIdentity %s does not exist", ns, ref.Name, id.Name)
	case apierrors.IsForbidden(err):
		return authclient.Credential{}, fail(http.StatusForbidden, "unauthorized_client", "the node agent may not read Secret %s/%s of AzureIdentity %s: grant it get on secrets", ns, ref.Name, id.Name)
	case err != nil:
		return authclient.Credential{}, notReady(http.StatusServiceUnavailable, msgSecret, ns, ref.Name, id.Name).because(err)
	}
	cred := authclient.Credential{TenantID: id.Spec.TenantID, ClientID: id.Spec.ClientID}
	if id.Spec.Type == podidentity.ServicePrincipal {
		s := strings.TrimSpace(string(sec.Data["clientSecret"]))
		if s == "" {
			return authclient.Credential{}, fail(http.StatusBadRequest, "invalid_request", "Secret %s/%s of AzureIdentity %s has no clientSecret key", ns, ref.Name, id.Name)
		}
		cred.Secret = s
		return cred, nil
	}
	signer, err := newCertSigner(sec.Data["certificate"], string(sec.Data["password"]), a.cfg.Now)
	if err != nil {
		var ce *certError
		if !errors.As(err, &ce) {
			return authclient.Credential{}, asFailure(err)
		}
		return authclient.Credential{}, fail(http.StatusBadRequest, "invalid_request", "Secret %s/%s of AzureIdentity %s: %s", ns, ref.Name, id.Name, ce.msg).because(ce.cause)
	}
	cred.SignerID = signer.proof
	cred.Sign = func() (string, error) {
		return signer.assertion(id.Spec.ClientID, a.tokenEndpoint(id.Spec.TenantID))
	}
	return cred, nil
}

func (a *Agent) tokenEndpoint(tenant string) string {
	return strings.TrimSuffix(a.cfg.Auth.Authority, "/") + "/" + tenant + "/oauth2/v2.0/token"
}

// certSigner signs client assertions with a service principal's
// certificate, as MSAL does: RS256 (or ES256), x5t#S256 naming the
// certificate, a fresh jti each time.
type certSigner struct {
	key        crypto.Signer
	alg        jose.SignatureAlgorithm
	thumbprint string
	proof      string
	now        func() time.Time
}

// certError is a certificate Secret that cannot sign: msg says what is
// wrong for the caller; cause, if any, is the parser's error, for the log.
type certError struct {
	msg   string
	cause error
}

func (e *certError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *certError) Unwrap() error { return e.cause }

// newCertSigner reads a PKCS#12 file (with password) or PEM certificate
// and private key, as AAD Pod Identity's type-2 Secrets hold them. Its
// errors are *certError.
func newCertSigner(data []byte, password string, now func() time.Time) (*certSigner, error) {
	if len(data) == 0 {
		return nil, &certError{msg: "it has no certificate key: put the PKCS#12 (or PEM certificate and key) there, and its password under password"}
	}
	var key any
	var cert *x509.Certificate
	if strings.Contains(string(data), "-----BEGIN") {
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			switch {
			case b.Type == "CERTIFICATE" && cert == nil:
				cert, _ = x509.ParseCertificate(b.Bytes)
			case strings.HasSuffix(b.Type, "PRIVATE KEY") && key == nil:
				key, _ = x509.ParsePKCS8PrivateKey(b.Bytes)
				if key == nil {
					key, _ = x509.ParsePKCS1PrivateKey(b.Bytes)
				}
				if key == nil {
					key, _ = x509.ParseECPrivateKey(b.Bytes)
				}
			}
		}
		if cert == nil || key == nil {
			return nil, &certError{msg: "its certificate PEM needs a CERTIFICATE and a PRIVATE KEY block"}
		}
	} else {
		var err error
		if key, cert, _, err = pkcs12.DecodeChain(data, password); err != nil {
			return nil, &certError{msg: "its certificate is not a PKCS#12 file that opens with its password", cause: err}
		}
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, &certError{msg: "its private key cannot sign"}
	}
	var alg jose.SignatureAlgorithm
	switch pub := s.Public().(type) {
	case *rsa.PublicKey:
		alg = jose.RS256
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, &certError{msg: "its EC key must be on P-256"}
		}
		alg = jose.ES256
	default:
		return nil, &certError{msg: "its key is not RSA or EC P-256", cause: fmt.Errorf("a %T key", pub)}
	}
	if !publicKeyEqual(cert.PublicKey, s.Public()) {
		return nil, &certError{msg: "its private key does not belong to its certificate"}
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, &certError{msg: "its private key cannot be encoded", cause: err}
	}
	sum := sha256.Sum256(cert.Raw)
	// The cache names the credential by its private key, which only its
	// holder has: a certificate alone (public) must never name a token
	// someone else obtained.
	proof := sha256.Sum256(der)
	return &certSigner{key: s, alg: alg, thumbprint: base64.RawURLEncoding.EncodeToString(sum[:]), proof: hex.EncodeToString(proof[:]), now: now}, nil
}

// publicKeyEqual compares two public keys of the kinds x509 returns.
func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func (c *certSigner) assertion(clientID, audience string) (string, error) {
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("x5t#S256", c.thumbprint)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: c.alg, Key: c.key}, opts)
	if err != nil {
		return "", err
	}
	now := c.now()
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	return jwt.Signed(sig).Claims(jwt.Claims{
		Issuer: clientID, Subject: clientID, Audience: jwt.Audience{audience}, ID: base64.RawURLEncoding.EncodeToString(id),
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)),
	}).Serialize()
}
