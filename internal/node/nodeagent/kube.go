package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/node/podidentity"
)

const podIPIndex = "coffer.podIP"

// KubeCluster reads pods of one node and the pod-identity objects from
// watch caches, and reviews tokens and reads Secrets through the API.
type KubeCluster struct {
	node  string
	cache cache.Cache
	// The two typed clients it needs, not kubernetes.Interface: that
	// package links every API group's client into the node binary.
	core   corev1client.CoreV1Interface
	authn  authenticationv1client.AuthenticationV1Interface
	synced atomic.Bool

	// changed counts pod-identity object events; the decoded snapshot is
	// rebuilt when it moved.
	changed atomic.Uint64
	mu      sync.Mutex
	snap    podidentity.Snapshot
	snapGen uint64
	built   bool

	// onChange, if set, is told of every pod or pod-identity change.
	onChange func()
	log      *slog.Logger
}

var kinds = []string{"AzureIdentity", "AzureIdentityBinding", "AzurePodIdentityException"}

// NewKubeCluster starts the caches for node and returns at once; Synced
// reports when they are ready. They stop when ctx ends.
func NewKubeCluster(ctx context.Context, rc *rest.Config, node string, log *slog.Logger, onChange func()) (*KubeCluster, error) {
	if log == nil {
		log = slog.Default()
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := cache.New(rc, cache.Options{Scheme: scheme, ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", node)},
	}})
	if err != nil {
		return nil, fmt.Errorf("kubernetes cache: %w", err)
	}
	core, err := corev1client.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	authn, err := authenticationv1client.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	k := &KubeCluster{node: node, cache: c, core: core, authn: authn, onChange: onChange, log: log}
	if err := c.IndexField(ctx, &corev1.Pod{}, podIPIndex, podIPs); err != nil {
		return nil, err
	}
	notify := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.changed.Add(1); k.notify() },
		UpdateFunc: func(any, any) { k.changed.Add(1); k.notify() },
		DeleteFunc: func(any) { k.changed.Add(1); k.notify() },
	}
	for _, kind := range kinds {
		inf, err := c.GetInformer(ctx, unstructuredOf(kind))
		if err != nil {
			return nil, fmt.Errorf("watching %s (are the aadpodidentity.k8s.io CRDs installed?): %w", kind, err)
		}
		inf.AddEventHandler(notify)
	}
	podInf, err := c.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return nil, err
	}
	podInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { k.notify() }, UpdateFunc: func(any, any) { k.notify() }, DeleteFunc: func(any) { k.notify() },
	})
	go c.Start(ctx)
	go func() {
		if c.WaitForCacheSync(ctx) {
			k.synced.Store(true)
			k.notify()
		}
	}()
	return k, nil
}

func (k *KubeCluster) notify() {
	if k.onChange != nil {
		k.onChange()
	}
}

func unstructuredOf(kind string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(podidentity.GroupVersion.WithKind(kind))
	return u
}

// podIPs indexes the pods an address can name: running or pending, and not
// on the host network (whose address is the node's).
func podIPs(o client.Object) []string {
	p := o.(*corev1.Pod)
	if p.Spec.HostNetwork || (p.Status.Phase != corev1.PodRunning && p.Status.Phase != corev1.PodPending) {
		return nil
	}
	var out []string
	for _, ip := range p.Status.PodIPs {
		out = append(out, ip.IP)
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		out = append(out, p.Status.PodIP)
	}
	return out
}

// Synced implements Cluster.
func (k *KubeCluster) Synced() bool { return k.synced.Load() }

// Pod implements Cluster.
func (k *KubeCluster) Pod(namespace, name string) (*corev1.Pod, error) {
	var p corev1.Pod
	err := k.cache.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: name}, &p)
	if client.IgnoreNotFound(err) == nil && (err != nil || p.Spec.NodeName != k.node) {
		return nil, ErrNoPod
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// PodsByIP implements Cluster.
func (k *KubeCluster) PodsByIP(ip string) ([]*corev1.Pod, error) {
	var l corev1.PodList
	if err := k.cache.List(context.Background(), &l, client.MatchingFields{podIPIndex: ip}); err != nil {
		return nil, err
	}
	out := make([]*corev1.Pod, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

// Pods returns the pods of this node.
func (k *KubeCluster) Pods() ([]corev1.Pod, error) {
	var l corev1.PodList
	if err := k.cache.List(context.Background(), &l); err != nil {
		return nil, err
	}
	return l.Items, nil
}

// Snapshot implements Cluster: the objects decoded once per change.
func (k *KubeCluster) Snapshot() (podidentity.Snapshot, error) {
	gen := k.changed.Load()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.built && k.snapGen == gen {
		return k.snap, nil
	}
	var s podidentity.Snapshot
	for _, kind := range kinds {
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(podidentity.GroupVersion.WithKind(kind + "List"))
		if err := k.cache.List(context.Background(), l); err != nil {
			return podidentity.Snapshot{}, err
		}
		for i := range l.Items {
			var err error
			switch kind {
			case "AzureIdentity":
				var v podidentity.AzureIdentity
				err = podidentity.FromUnstructured(&l.Items[i], &v)
				s.Identities = append(s.Identities, v)
			case "AzureIdentityBinding":
				var v podidentity.AzureIdentityBinding
				err = podidentity.FromUnstructured(&l.Items[i], &v)
				s.Bindings = append(s.Bindings, v)
			default:
				var v podidentity.AzurePodIdentityException
				err = podidentity.FromUnstructured(&l.Items[i], &v)
				s.Exceptions = append(s.Exceptions, v)
			}
			if err != nil {
				// One bad object must not stop every pod on the node:
				// it is left out, and said once per change.
				k.log.Warn("ignoring a pod identity object that cannot be read", "kind", kind,
					"namespace", l.Items[i].GetNamespace(), "name", l.Items[i].GetName(), "error", err)
				switch kind {
				case "AzureIdentity":
					s.Identities = s.Identities[:len(s.Identities)-1]
				case "AzureIdentityBinding":
					s.Bindings = s.Bindings[:len(s.Bindings)-1]
				default:
					s.Exceptions = s.Exceptions[:len(s.Exceptions)-1]
				}
			}
		}
	}
	k.snap, k.snapGen, k.built = s, gen, true
	return s, nil
}

// Secret implements Cluster. Secrets are read one at a time, never
// watched: the agent should not hold every Secret of the cluster.
func (k *KubeCluster) Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	return k.core.Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
}

// Review implements Cluster with the TokenReview API.
func (k *KubeCluster) Review(ctx context.Context, token string, audiences []string) (Review, error) {
	tr, err := k.authn.TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return Review{}, err
	}
	rv := Review{Authenticated: tr.Status.Authenticated, Error: tr.Status.Error}
	if !rv.Authenticated {
		return rv, nil
	}
	var ok bool
	if rv.Namespace, rv.ServiceAccount, ok = serviceAccount(tr.Status.User.Username); !ok {
		return Review{Error: "the token is not a service account's (" + tr.Status.User.Username + ")"}, nil
	}
	if v := tr.Status.User.Extra["authentication.kubernetes.io/pod-name"]; len(v) == 1 {
		rv.PodName = v[0]
	}
	if v := tr.Status.User.Extra["authentication.kubernetes.io/pod-uid"]; len(v) == 1 {
		rv.PodUID = v[0]
	}
	if v := tr.Status.User.Extra["authentication.kubernetes.io/node-name"]; len(v) == 1 {
		rv.NodeName = v[0]
	}
	return rv, nil
}

func serviceAccount(user string) (ns, name string, ok bool) {
	const prefix = "system:serviceaccount:"
	if len(user) <= len(prefix) || user[:len(prefix)] != prefix {
		return "", "", false
	}
	rest := user[len(prefix):]
	for i := 0; i < len(rest); i++ {
		if rest[i] == ':' {
			return rest[:i], rest[i+1:], i > 0 && i < len(rest)-1
		}
	}
	return "", "", false
}
