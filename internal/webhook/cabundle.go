package webhook

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ErrCABundle is returned (wrapped) by Rotator.Ensure when the serving
// certificate is in place but the MutatingWebhookConfiguration could not be
// updated with its CA. The webhook can serve meanwhile; the apiserver just
// cannot reach it until the update succeeds.
var ErrCABundle = errors.New("cannot publish the CA in the MutatingWebhookConfiguration")

// maxPreviousCAs bounds how many earlier CAs stay in a caBundle. One is
// what a rotation needs (replicas still serving the previous certificate);
// the second covers a rotation that happens while one is in progress.
const maxPreviousCAs = 2

// mergeBundle returns the caBundle that trusts ca, and whether it differs
// from have. A bundle that already holds ca is kept as it is. Otherwise ca
// comes first, followed by the CAs of have that are still valid at now,
// newest first: other replicas keep serving certificates from the previous
// CA until their next check, and must stay trusted until then.
func mergeBundle(now time.Time, ca, have []byte) ([]byte, bool) {
	certs := pemCertificates(have)
	der := pemBlock(ca)
	for _, c := range certs {
		if bytes.Equal(c.Bytes, der) {
			return have, false
		}
	}
	type dated struct {
		block    *pem.Block
		notAfter time.Time
	}
	var prev []dated
	for _, c := range certs {
		cert, err := x509.ParseCertificate(c.Bytes)
		if err != nil || !now.Before(cert.NotAfter) || !cert.IsCA {
			continue
		}
		prev = append(prev, dated{c, cert.NotAfter})
	}
	sort.SliceStable(prev, func(i, j int) bool { return prev[i].notAfter.After(prev[j].notAfter) })
	out := append([]byte(nil), ca...)
	for i := 0; i < len(prev) && i < maxPreviousCAs; i++ {
		out = append(out, pem.EncodeToMemory(prev[i].block)...)
	}
	return out, true
}

// publishCA puts ca into the caBundle of every webhook of the named
// MutatingWebhookConfiguration, retrying when another replica or an
// installer updated it in between.
func publishCA(ctx context.Context, kube client.Client, name string, ca []byte, now time.Time) (changed bool, err error) {
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		changed = false
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := kube.Get(ctx, client.ObjectKey{Name: name}, &mwc); err != nil {
			return err
		}
		if len(mwc.Webhooks) == 0 {
			return fmt.Errorf("MutatingWebhookConfiguration %s has no webhooks", name)
		}
		for i := range mwc.Webhooks {
			cc := &mwc.Webhooks[i].ClientConfig
			if b, ok := mergeBundle(now, ca, cc.CABundle); ok {
				cc.CABundle, changed = b, true
			}
		}
		if !changed {
			return nil
		}
		return kube.Update(ctx, &mwc)
	})
	return changed, err
}

// pemCertificates returns the CERTIFICATE blocks of data; anything else in
// a caBundle is dropped when it is rewritten.
func pemCertificates(data []byte) []*pem.Block {
	var out []*pem.Block
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, b)
		}
	}
}

// pemBlock returns the DER of the first block of data.
func pemBlock(data []byte) []byte {
	if b, _ := pem.Decode(data); b != nil {
		return b.Bytes
	}
	return nil
}
