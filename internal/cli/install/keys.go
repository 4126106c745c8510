package install

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// caSecret holds the CA that signs the server's certificate, so that a
// later run can reissue it (for another DNS suffix, or near its expiry)
// and clients keep trusting the same CA.
const caSecret = "coffer-install-ca"

func ours(m metav1.Object) bool { return m.GetLabels()[LabelManagedBy] == ManagedBy }

// ensureKeys makes what the server reads before it starts, unless it
// exists: the root key, and the server's TLS certificate for *.{suffix}
// and {suffix} with the CA clients trust (in ConfigMap coffer-ca, which
// the node components mount). Objects of the same names that Install did
// not make are used as they are. It returns the CA's certificate.
func (c *cluster) ensureKeys(ctx context.Context, suffix string, labels map[string]string, p progress) ([]byte, error) {
	secrets := c.cs.CoreV1().Secrets(c.ns)
	if _, err := secrets.Get(ctx, rootKeySecret, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: rootKeySecret, Labels: labels}, Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{rootKeyKey: []byte(rootkey.Generate().Encode())}}
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("creating the root key's Secret %s: %w", rootKeySecret, err)
		}
		p.detail("created the root key (Secret %s)", rootKeySecret)
	} else if err != nil {
		return nil, fmt.Errorf("reading Secret %s: %w", rootKeySecret, err)
	} else {
		p.detail("the root key exists (Secret %s)", rootKeySecret)
	}

	tls, err := secrets.Get(ctx, tlsSecret, metav1.GetOptions{})
	tlsMissing := apierrors.IsNotFound(err)
	if err != nil && !tlsMissing {
		return nil, fmt.Errorf("reading Secret %s: %w", tlsSecret, err)
	}
	if !tlsMissing && !ours(tls) {
		// Someone else's certificate: its CA must be published already.
		cm, err := c.cs.CoreV1().ConfigMaps(c.ns).Get(ctx, caConfigMap, metav1.GetOptions{})
		if err != nil || cm.Data["ca.crt"] == "" {
			return nil, fmt.Errorf("the Secret %s/%s exists and was not made by coffer install, but the ConfigMap %s (key ca.crt, its CA) is missing: create it, or delete the Secret to let coffer install make both", c.ns, tlsSecret, caConfigMap)
		}
		p.detail("using the server certificate in Secret %s, which coffer install did not make", tlsSecret)
		return []byte(cm.Data["ca.crt"]), nil
	}

	now := time.Now()
	ca, err := c.ensureCA(ctx, labels, now)
	if err != nil {
		return nil, err
	}
	names := []string{"*." + suffix, suffix}
	if tlsMissing || !ca.Covers(pki.Pair{CertPEM: tls.Data["tls.crt"], KeyPEM: tls.Data["tls.key"]}, names, now) {
		pair, err := ca.Server(names, nil, now)
		if err != nil {
			return nil, err
		}
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: tlsSecret, Labels: labels}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": pair.CertPEM, "tls.key": pair.KeyPEM}}
		if err := c.put(ctx, s); err != nil {
			return nil, fmt.Errorf("storing the server certificate in Secret %s: %w", tlsSecret, err)
		}
		p.detail("issued the server certificate for %s (Secret %s)", names[0], tlsSecret)
	} else {
		p.detail("the server certificate for %s is current (Secret %s)", names[0], tlsSecret)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: caConfigMap, Labels: labels}, Data: map[string]string{"ca.crt": string(ca.CertPEM())}}
	if err := c.put(ctx, cm); err != nil {
		return nil, fmt.Errorf("publishing the CA in ConfigMap %s: %w", caConfigMap, err)
	}
	return ca.CertPEM(), nil
}

func (c *cluster) ensureCA(ctx context.Context, labels map[string]string, now time.Time) (*pki.Authority, error) {
	s, err := c.cs.CoreV1().Secrets(c.ns).Get(ctx, caSecret, metav1.GetOptions{})
	if err == nil {
		ca, err := pki.ParseAuthority(pki.Pair{CertPEM: s.Data["tls.crt"], KeyPEM: s.Data["tls.key"]})
		if err != nil {
			return nil, fmt.Errorf("the Secret %s/%s: %w", c.ns, caSecret, err)
		}
		return ca, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading Secret %s: %w", caSecret, err)
	}
	ca, err := pki.NewAuthority("Coffer CA ("+c.ns+")", now)
	if err != nil {
		return nil, err
	}
	pair, err := ca.Pair()
	if err != nil {
		return nil, err
	}
	s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: caSecret, Labels: labels}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": pair.CertPEM, "tls.key": pair.KeyPEM}}
	if _, err := c.cs.CoreV1().Secrets(c.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("storing the CA in Secret %s: %w", caSecret, err)
	}
	return ca, nil
}

// put creates a Secret or ConfigMap of Install's, or replaces the one
// Install made before; one that Install did not make is an error.
func (c *cluster) put(ctx context.Context, obj any) error {
	switch o := obj.(type) {
	case *corev1.Secret:
		api := c.cs.CoreV1().Secrets(c.ns)
		return putOurs(ctx, "Secret", c.ns, o, api.Get, api.Create, api.Update)
	case *corev1.ConfigMap:
		api := c.cs.CoreV1().ConfigMaps(c.ns)
		return putOurs(ctx, "ConfigMap", c.ns, o, api.Get, api.Create, api.Update)
	}
	return fmt.Errorf("put: %T", obj)
}

// putOurs is put for one kind, through that kind's typed client.
func putOurs[T metav1.Object](ctx context.Context, kind, ns string, o T,
	get func(context.Context, string, metav1.GetOptions) (T, error),
	create func(context.Context, T, metav1.CreateOptions) (T, error),
	update func(context.Context, T, metav1.UpdateOptions) (T, error)) error {
	cur, err := get(ctx, o.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = create(ctx, o, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if !ours(cur) {
		return fmt.Errorf("the %s %s/%s exists and was not made by coffer install: delete it, or leave it to coffer install", kind, ns, o.GetName())
	}
	o.SetResourceVersion(cur.GetResourceVersion())
	_, err = update(ctx, o, metav1.UpdateOptions{})
	return err
}

// StateConfigMap is the ConfigMap where Install records the node pool it
// made (as `az aks show` shows the add-on's identity): read it for the
// identity's client id, as the examples do.
func StateConfigMap(release string) string { return release + "-install" }

// The keys of the state ConfigMap.
const (
	StateTenantID      = "tenantID"
	StateNodePool      = "nodePool"
	StateResourceGroup = "resourceGroup"
	StateClientID      = "identityClientID"
	StatePrincipalID   = "identityPrincipalID"
	StateResourceID    = "identityResourceID"
	StateAgentClientID = "agentClientID"
)

func (c *cluster) readState(ctx context.Context, release string) (*Identity, error) {
	cm, err := c.cs.CoreV1().ConfigMaps(c.ns).Get(ctx, StateConfigMap(release), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading ConfigMap %s: %w", StateConfigMap(release), err)
	}
	d := cm.Data
	return &Identity{TenantID: d[StateTenantID], NodePool: d[StateNodePool], ResourceGroup: d[StateResourceGroup],
		ClientID: d[StateClientID], PrincipalID: d[StatePrincipalID], ResourceID: d[StateResourceID], AgentClientID: d[StateAgentClientID]}, nil
}

// writeNodePool stores the agents' credentials where the chart's node
// agent reads them, and the node pool's identity in the state ConfigMap.
func (c *cluster) writeNodePool(ctx context.Context, release string, id Identity, secret string, labels map[string]string) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: agentSecret, Labels: labels}, Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{"client-id": []byte(id.AgentClientID), "client-secret": []byte(secret)}}
	if err := c.put(ctx, s); err != nil {
		return fmt.Errorf("storing the node agents' credentials: %w", err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: StateConfigMap(release), Labels: labels}, Data: map[string]string{
		StateTenantID: id.TenantID, StateNodePool: id.NodePool, StateResourceGroup: id.ResourceGroup, StateClientID: id.ClientID,
		StatePrincipalID: id.PrincipalID, StateResourceID: id.ResourceID, StateAgentClientID: id.AgentClientID,
	}}
	return c.put(ctx, cm)
}
