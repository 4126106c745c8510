package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// RotatorConfig configures a Rotator.
type RotatorConfig struct {
	// Kube reads and writes the Secret and the
	// MutatingWebhookConfiguration. It must not be a cache: the race
	// between replicas is settled by resourceVersion on fresh reads.
	Kube client.Client

	// SecretNamespace and SecretName name the Secret that holds the
	// certificate, shared by all replicas.
	SecretNamespace, SecretName string

	// WebhookConfigName is the MutatingWebhookConfiguration whose webhooks
	// get the CA as their caBundle.
	WebhookConfigName string

	// Hosts are the DNS names and IP addresses the certificate must cover.
	Hosts []string

	// Validity is a new certificate's lifetime; zero means a year.
	Validity time.Duration

	// CheckInterval is how often the Secret is checked again, picking up
	// another replica's rotation or making one; zero means an hour.
	CheckInterval time.Duration

	// RetryInterval is the wait after a failed check; zero means 10
	// seconds. Until the CA is published the apiserver cannot call the
	// webhook, so that failure is retried sooner than CheckInterval.
	RetryInterval time.Duration

	// Now is the clock; nil means time.Now. Tests move it forward to make
	// a certificate due for renewal.
	Now func() time.Time

	// Metrics count rotations; nil counts into a private registry.
	Metrics *Metrics

	// Log receives rotations and failures. Nil discards.
	Log *slog.Logger
}

// Rotator keeps the webhook's serving certificate: it loads it from a
// Secret, replaces it before it expires or when the hosts change, publishes
// its CA in the MutatingWebhookConfiguration, and hands it to the TLS
// server through GetCertificate, so a rotation needs no restart.
type Rotator struct {
	cfg  RotatorConfig
	cert atomic.Pointer[tls.Certificate]
}

// NewRotator checks cfg and returns a Rotator with no certificate yet; call
// Ensure or Start before serving.
func NewRotator(cfg RotatorConfig) (*Rotator, error) {
	switch {
	case cfg.Kube == nil:
		return nil, errors.New("webhook: no Kubernetes client for the certificate")
	case cfg.SecretName == "" || cfg.SecretNamespace == "":
		return nil, errors.New("webhook: the certificate Secret needs a name and a namespace")
	case cfg.WebhookConfigName == "":
		return nil, errors.New("webhook: no MutatingWebhookConfiguration name to publish the CA in")
	}
	if err := ValidateHosts(cfg.Hosts); err != nil {
		return nil, err
	}
	if cfg.Validity == 0 {
		cfg.Validity = 365 * 24 * time.Hour
	}
	if cfg.Validity < time.Hour {
		return nil, fmt.Errorf("webhook: certificate validity %s is under an hour", cfg.Validity)
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = time.Hour
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Rotator{cfg: cfg}, nil
}

// GetCertificate is tls.Config.GetCertificate: the current certificate.
func (r *Rotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := r.cert.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("webhook: no serving certificate yet")
}

// TLSConfig is the server side of TLS: the rotating certificate, TLS 1.2
// or later.
func (r *Rotator) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
}

// Ready returns an error until a certificate is loaded.
func (r *Rotator) Ready() error {
	if r.cert.Load() == nil {
		return errors.New("no serving certificate yet")
	}
	return nil
}

// Start makes the first check, then checks again in the background every
// CheckInterval until ctx ends. It fails only if there is no certificate to
// serve; a CA that could not be published yet is logged and retried every
// RetryInterval.
func (r *Rotator) Start(ctx context.Context) error {
	err := r.Ensure(ctx)
	if err != nil && !errors.Is(err, ErrCABundle) {
		return err
	}
	wait := r.cfg.CheckInterval
	if err != nil {
		r.cfg.Log.Warn("serving without a published CA; retrying", "error", err)
		wait = r.cfg.RetryInterval
	}
	go r.run(ctx, wait)
	return nil
}

func (r *Rotator) run(ctx context.Context, wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.Ensure(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.cfg.Log.Warn("certificate check failed; retrying", "error", err, "retry", r.cfg.RetryInterval)
			t.Reset(r.cfg.RetryInterval)
			continue
		}
		t.Reset(r.cfg.CheckInterval)
	}
}

// Ensure makes one pass:
//
//  1. Read the Secret. If its certificate verifies against its CA, covers
//     every host and is not in the last third of its lifetime, use it.
//  2. Otherwise generate a CA and certificate and write them to the
//     Secret, creating it or updating the version read in step 1. If
//     another replica created or updated it first, go back to step 1 and
//     take theirs.
//  3. Serve the certificate from now on.
//  4. Put its CA in the caBundle of every webhook of the
//     MutatingWebhookConfiguration, keeping the previous CA.
//
// A failure in step 4 is wrapped in ErrCABundle: the certificate is served
// all the same.
func (r *Rotator) Ensure(ctx context.Context) error {
	// 1, 2.
	b, err := r.ensureSecret(ctx)
	if err != nil {
		return fmt.Errorf("certificate Secret %s/%s: %w", r.cfg.SecretNamespace, r.cfg.SecretName, err)
	}
	// 3.
	if err := r.use(b); err != nil {
		return fmt.Errorf("certificate Secret %s/%s: %w", r.cfg.SecretNamespace, r.cfg.SecretName, err)
	}
	// 4.
	changed, err := publishCA(ctx, r.cfg.Kube, r.cfg.WebhookConfigName, b.CA, r.cfg.Now())
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrCABundle, r.cfg.WebhookConfigName, err)
	}
	if changed {
		r.cfg.Log.Info("published the CA", "mutatingWebhookConfiguration", r.cfg.WebhookConfigName)
	}
	return nil
}

// secretAttempts bounds step 2's retries. Each lost race means another
// replica wrote a certificate that step 1 accepts, so a second round is
// normally the last; more only happen if replicas disagree on the hosts.
const secretAttempts = 5

func (r *Rotator) ensureSecret(ctx context.Context) (certBundle, error) {
	key := client.ObjectKey{Namespace: r.cfg.SecretNamespace, Name: r.cfg.SecretName}
	for attempt := 1; ; attempt++ {
		now := r.cfg.Now()
		var s corev1.Secret
		err := r.cfg.Kube.Get(ctx, key, &s)
		exists := err == nil
		if err != nil && !apierrors.IsNotFound(err) {
			return certBundle{}, err
		}
		reason := "no Secret yet"
		if exists {
			if reason = renewalReason(now, bundleFromSecret(&s), r.cfg.Hosts); reason == "" {
				return bundleFromSecret(&s), nil
			}
		}
		b, err := generateBundle(now, r.cfg.Hosts, r.cfg.Validity)
		if err != nil {
			return certBundle{}, err
		}
		if exists {
			if s.Data == nil {
				s.Data = map[string][]byte{}
			}
			s.Data[secretCAKey], s.Data[secretCertKey], s.Data[secretKeyKey] = b.CA, b.Cert, b.Key
			err = r.cfg.Kube.Update(ctx, &s)
		} else {
			err = r.cfg.Kube.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
					Labels: map[string]string{"app.kubernetes.io/managed-by": "coffer-webhook"}},
				Type: corev1.SecretTypeTLS,
				Data: map[string][]byte{secretCAKey: b.CA, secretCertKey: b.Cert, secretKeyKey: b.Key},
			})
		}
		if err == nil {
			r.cfg.Metrics.rotations.Inc()
			r.cfg.Log.Info("generated a serving certificate", "reason", reason, "hosts", r.cfg.Hosts, "notAfter", now.Add(r.cfg.Validity).UTC())
			return b, nil
		}
		if (apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err)) && attempt < secretAttempts {
			continue // another replica won the race: read what it wrote
		}
		return certBundle{}, err
	}
}

// use makes b the served certificate.
func (r *Rotator) use(b certBundle) error {
	pair, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return err
	}
	if old := r.cert.Load(); old != nil && string(old.Certificate[0]) == string(pair.Certificate[0]) {
		return nil
	}
	r.cert.Store(&pair)
	r.cfg.Metrics.notAfter.Set(float64(pair.Leaf.NotAfter.Unix()))
	r.cfg.Log.Info("serving certificate loaded", "serial", pair.Leaf.SerialNumber.Text(16), "notAfter", pair.Leaf.NotAfter.UTC())
	return nil
}
