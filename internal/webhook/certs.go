package webhook

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// certBundle is a serving certificate, its key and the CA that signed it,
// each PEM, as stored in the Secret under tls.crt, tls.key and ca.crt.
//
// The CA's private key is not among them: it signs one serving certificate
// and is dropped. A rotation makes a new CA, so nobody who reads the Secret
// can mint other certificates that the apiserver would trust.
type certBundle struct {
	CA, Cert, Key []byte
}

// Secret keys, those of a kubernetes.io/tls Secret plus the CA under the
// name that service-account token Secrets and cert-manager use.
const (
	secretCAKey   = "ca.crt"
	secretCertKey = corev1.TLSCertKey
	secretKeyKey  = corev1.TLSPrivateKeyKey
)

func bundleFromSecret(s *corev1.Secret) certBundle {
	return certBundle{CA: s.Data[secretCAKey], Cert: s.Data[secretCertKey], Key: s.Data[secretKeyKey]}
}

// ServiceHosts are the names by which a Service is reached in-cluster:
// the apiserver calls a webhook at {svc}.{ns}.svc, and the other forms
// cover clients that resolve through search paths or the cluster domain.
func ServiceHosts(service, namespace string) []string {
	return []string{
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc",
		service + "." + namespace + ".svc.cluster.local",
	}
}

// ValidateHosts checks that each host is an IP address or a DNS name that a
// certificate can carry.
func ValidateHosts(hosts []string) error {
	if len(hosts) == 0 {
		return errors.New("no host names for the serving certificate")
	}
	for _, h := range hosts {
		if net.ParseIP(h) != nil {
			continue
		}
		if errs := validation.IsDNS1123Subdomain(h); len(errs) > 0 {
			return fmt.Errorf("certificate host %q is neither an IP address nor a DNS name: %s", h, errs[0])
		}
	}
	return nil
}

// generateBundle makes a new CA and a serving certificate for hosts that it
// signs, both valid from an hour before now (clock skew between replicas and
// the apiserver) for validity. Keys are ECDSA P-256: what every apiserver
// accepts, and cheap to make on each start of a new replica.
func generateBundle(now time.Time, hosts []string, validity time.Duration) (certBundle, error) {
	notBefore, notAfter := now.Add(-time.Hour), now.Add(validity)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certBundle{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(),
		// A distinct name per CA: during a rotation two are in the bundle.
		Subject:               pkix.Name{CommonName: fmt.Sprintf("coffer-webhook-ca@%d", now.Unix())},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return certBundle{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return certBundle{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certBundle{}, err
	}
	leaf := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return certBundle{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return certBundle{}, err
	}
	return certBundle{
		CA:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		Cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Key:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

// renewalReason says why b cannot be served at now for hosts, or "" if it
// can. A certificate is renewed once in the last third of its lifetime, so
// that an hourly check on any replica has months to act before the
// apiserver would refuse it.
func renewalReason(now time.Time, b certBundle, hosts []string) string {
	if len(b.Cert) == 0 || len(b.Key) == 0 || len(b.CA) == 0 {
		return "no certificate yet"
	}
	pair, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return "the certificate and key do not parse or match: " + err.Error()
	}
	leaf := pair.Leaf
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b.CA) {
		return "the CA does not parse"
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return "the certificate does not verify against its CA: " + err.Error()
	}
	for _, h := range hosts {
		if err := leaf.VerifyHostname(h); err != nil {
			return fmt.Sprintf("the certificate does not cover %s", h)
		}
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if renewAt := leaf.NotBefore.Add(life * 2 / 3); !now.Before(renewAt) {
		return fmt.Sprintf("the certificate expires at %s and is in the last third of its lifetime", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return ""
}
