package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// tokens gets and caches service-account tokens from the TokenRequest
// API, one per service account and audience, as the kubelet does for a
// CSI volume's tokenRequests. A token is reused while more than half its
// lifetime remains: Coffer's provider holds vault reads with it, and
// needs it valid for a while after the mount.
type tokens struct {
	kube      kubernetes.Interface
	audiences []string
	lifetime  time.Duration
	now       func() time.Time
	requests  func(result string) // counts TokenRequest calls

	mu      sync.Mutex
	entries map[string]*tokenEntry // by namespace/name
}

// tokenEntry is one service account's tokens, and the request under way.
type tokenEntry struct {
	attr    string // the serviceAccount.tokens attribute
	expires time.Time
	fetch   chan struct{} // non-nil while a request is under way; closed when it ends
	err     error         // of the last request, for those that waited on it
}

// tokenAttr is one audience's entry of csi.storage.k8s.io/serviceAccount.tokens.
type tokenAttr struct {
	Token               string `json:"token"`
	ExpirationTimestamp string `json:"expirationTimestamp"`
}

// attribute returns the serviceAccount.tokens attribute for namespace/name:
// a JSON object from each audience to its token. With no audiences it is
// empty: the provider gets no token.
func (t *tokens) attribute(ctx context.Context, namespace, name string) (string, error) {
	if len(t.audiences) == 0 {
		return "", nil
	}
	key := namespace + "/" + name
	for {
		t.mu.Lock()
		e := t.entries[key]
		if e == nil {
			e = &tokenEntry{}
			t.entries[key] = e
		}
		if e.attr != "" && t.now().Before(e.expires) {
			attr := e.attr
			t.mu.Unlock()
			return attr, nil
		}
		if e.fetch == nil {
			e.fetch = make(chan struct{})
			t.mu.Unlock()
			attr, expires, err := t.request(ctx, namespace, name)
			t.mu.Lock()
			e.attr, e.expires, e.err = attr, expires, err
			close(e.fetch)
			e.fetch = nil
			t.mu.Unlock()
			return attr, err
		}
		wait := e.fetch
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-wait:
		}
		t.mu.Lock()
		attr, err := e.attr, e.err
		fresh := attr != "" && t.now().Before(e.expires)
		t.mu.Unlock()
		if err != nil || fresh {
			return attr, err
		}
	}
}

// request asks the TokenRequest API for one token per audience.
func (t *tokens) request(ctx context.Context, namespace, name string) (string, time.Time, error) {
	seconds := int64(t.lifetime / time.Second)
	out := make(map[string]tokenAttr, len(t.audiences))
	reuseUntil := time.Time{}
	for _, aud := range t.audiences {
		tr, err := t.kube.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{aud}, ExpirationSeconds: &seconds},
		}, metav1.CreateOptions{})
		if err != nil {
			t.requests("error")
			return "", time.Time{}, fmt.Errorf("TokenRequest for service account %s/%s, audience %s: %w", namespace, name, aud, err)
		}
		t.requests("ok")
		exp := tr.Status.ExpirationTimestamp.Time
		out[aud] = tokenAttr{Token: tr.Status.Token, ExpirationTimestamp: exp.UTC().Format(time.RFC3339)}
		// Reuse it until half its lifetime is gone.
		half := t.now().Add(exp.Sub(t.now()) / 2)
		if reuseUntil.IsZero() || half.Before(reuseUntil) {
			reuseUntil = half
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return "", time.Time{}, err
	}
	return string(b), reuseUntil, nil
}

// forget drops the cached tokens of a service account, after the provider
// refused them.
func (t *tokens) forget(namespace, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entries[namespace+"/"+name]; e != nil && e.fetch == nil {
		delete(t.entries, namespace+"/"+name)
	}
}
