// Package install installs Coffer into a Kubernetes cluster, as `cilium
// install` or `linkerd install` do, through Helm's Go library: it makes
// what the chart needs before it starts (the root key, the server's CA and
// certificate), installs the server, lets its init container initialise
// the tenant, creates the node pool's identity and credentials through the
// server (as the AKS add-on creates its azurekeyvaultsecretsprovider
// identity), then installs the node components and waits until everything
// is ready. A second run upgrades. Everything it creates is labelled, so
// that Uninstall removes that and nothing else.
package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"helm.sh/helm/v4/pkg/action"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/kube"
	"helm.sh/helm/v4/pkg/release"
	"helm.sh/helm/v4/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

// Labels on everything Install creates itself (the chart's objects carry
// Helm's): Uninstall deletes what has them, and nothing else.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "coffer-install"
	LabelInstance  = "app.kubernetes.io/instance"
)

// The chart's default names for what the server and the node agent read;
// Install creates them and so owns those values.
const (
	rootKeySecret  = "coffer-root-key"
	rootKeyKey     = "root-key"
	tlsSecret      = "coffer-tls"
	caConfigMap    = "coffer-ca"
	agentSecret    = "coffer-node-agent"
	adminSecret    = "coffer-admin"
	webhookCertFmt = "%s-webhook-cert"
)

// Options configure an installation.
type Options struct {
	// Kubeconfig is the kubeconfig file (default: $KUBECONFIG, then
	// ~/.kube/config); Context one of its contexts (default: current).
	Kubeconfig, Context string
	// Namespace is where Coffer runs (default coffer-system); it is
	// created if missing.
	Namespace string
	// Release is the Helm release's name (default coffer).
	Release string
	// Values are the chart values given by the user (the --values files,
	// merged in order). Those Install sets itself must not disagree.
	Values map[string]any
	// DNSSuffix is server.dnsSuffix, if not in Values: vaults are
	// https://{vault}.{suffix}:{port}/.
	DNSSuffix string
	// NodePool and ResourceGroup name the node pool whose identity and
	// credentials the node agents use (default coffer-nodes in
	// resource group coffer).
	NodePool, ResourceGroup string
	// Timeout bounds each wait for readiness (default 5 minutes).
	Timeout time.Duration
	// Out receives the progress and the summary (default: discarded).
	Out io.Writer
	// Log receives Helm's own log (default: discarded).
	Log *slog.Logger
	// Connect reaches a server pod's HTTPS port for the management calls
	// (default: a port forward through the apiserver, as `kubectl
	// port-forward` does). Tests and coffer dev --kubernetes use the
	// default too.
	Connect Connector
}

func (o *Options) defaults() error {
	if o.Namespace == "" {
		o.Namespace = "coffer-system"
	}
	if o.Release == "" {
		o.Release = "coffer"
	}
	if o.NodePool == "" {
		o.NodePool = "coffer-nodes"
	}
	if o.ResourceGroup == "" {
		o.ResourceGroup = "coffer"
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Values == nil {
		o.Values = map[string]any{}
	}
	if o.Connect == nil {
		o.Connect = PortForward
	}
	if o.Timeout < 0 {
		return daemon.Invalid("Timeout", "must not be negative")
	}
	return nil
}

// Result is what an installation made, and what its user needs next.
type Result struct {
	Namespace, Release string
	// Revision is the Helm release's revision (1 after a first install
	// of the server alone, 2 once the node components are in).
	Revision int
	// Upgraded is true when the release existed before this run.
	Upgraded bool
	// Identity is the node pool's system-assigned identity: what to grant
	// access to, as the add-on's azurekeyvaultsecretsprovider identity.
	Identity Identity
	// Admin holds the first administrator's credentials (from the Secret
	// the init container wrote); its CAFile is empty: CAPEM is the CA.
	Admin devenv.Env
	// CAPEM is the CA of the server's certificate.
	CAPEM []byte
	// DNSSuffix and Port say where vaults are served.
	DNSSuffix string
	Port      int
}

// Identity is the node pool's identity, in `az identity show`'s terms.
type Identity struct {
	NodePool, ResourceGroup string
	TenantID                string
	ClientID, PrincipalID   string
	ResourceID              string
	// AgentClientID is the node agents' own principal.
	AgentClientID string
}

// cluster is what Install and Uninstall talk to.
type cluster struct {
	cfg    *rest.Config
	getter genericclioptions.RESTClientGetter
	cs     kubernetes.Interface
	kc     client.Client
	ns     string
}

func connect(ctx context.Context, kubeconfig, kubeContext, ns string) (*cluster, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Context, flags.Namespace = &kubeconfig, &kubeContext, &ns
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return nil, &NoClusterError{Err: err}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100
	cfg.Timeout = 30 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, &NoClusterError{Host: cfg.Host, Err: err}
	}
	probe, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/version").DoRaw(probe); err != nil {
		return nil, &NoClusterError{Host: cfg.Host, Err: err}
	}
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	apiextensionsv1.AddToScheme(scheme)
	kc, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, &NoClusterError{Host: cfg.Host, Err: err}
	}
	return &cluster{cfg: cfg, getter: flags, cs: cs, kc: kc, ns: ns}, nil
}

// helm returns Helm's action configuration for the release's namespace.
func (c *cluster) helm(log *slog.Logger) (*action.Configuration, error) {
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(log.Handler()))
	if err := cfg.Init(c.getter, c.ns, "secret"); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Install installs Coffer, or upgrades the installation that Install made
// before.
func Install(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	p := progress{o.Out}
	ch, err := Chart()
	if err != nil {
		return nil, fmt.Errorf("loading the chart built into coffer: %w", err)
	}
	suffix, err := dnsSuffix(o)
	if err != nil {
		return nil, err
	}
	// Nothing reaches the cluster before the values are known to be
	// right: the chart's own checks, with every value Install will set.
	if err := checkValues(ch, o, suffix); err != nil {
		return nil, err
	}

	p.step("Connecting to the cluster")
	c, err := connect(ctx, o.Kubeconfig, o.Context, o.Namespace)
	if err != nil {
		return nil, err
	}
	p.detail("%s", c.cfg.Host)
	if err := c.checkAccess(ctx, installNeeds(o.Namespace)); err != nil {
		return nil, err
	}

	hc, err := c.helm(o.Log)
	if err != nil {
		return nil, err
	}
	var rel *releaseInfo
	if rel, err = current(hc, o.Release); err != nil {
		return nil, err
	}

	labels := map[string]string{LabelManagedBy: ManagedBy, LabelInstance: o.Release}
	p.step("Preparing namespace %s", o.Namespace)
	if err := c.ensureNamespace(ctx, labels, p); err != nil {
		return nil, err
	}
	caPEM, err := c.ensureKeys(ctx, suffix, labels, p)
	if err != nil {
		return nil, err
	}
	if err := c.ensureCRDs(ctx, ch, labels, p); err != nil {
		return nil, err
	}

	state, err := c.readState(ctx, o.Release)
	if err != nil {
		return nil, err
	}
	res := &Result{Namespace: o.Namespace, Release: o.Release, Upgraded: rel != nil, CAPEM: caPEM, DNSSuffix: suffix, Port: publicPort(o.Values)}
	full := func(id Identity) map[string]any {
		return Merge(Merge(Merge(map[string]any{}, o.Values), managedValues(suffix)), map[string]any{
			"tenantID":  id.TenantID,
			"nodeAgent": map[string]any{"systemIdentity": id.ClientID},
		})
	}

	if state == nil || !c.secretExists(ctx, agentSecret) {
		// The node components need the tenant and a node pool, which only
		// the running server can give: the server first. A release that
		// exists already runs it (an earlier run stopped after it, or the
		// agents' Secret was deleted).
		if rel == nil {
			vals := Merge(Merge(map[string]any{}, o.Values), managedValues(suffix))
			Merge(vals, map[string]any{
				"linux": map[string]any{"enabled": false}, "provider": map[string]any{"enabled": false},
				"nodeAgent": map[string]any{"enabled": false}, "webhook": map[string]any{"enabled": false},
				"syncController": map[string]any{"enabled": false},
			})
			p.step("Installing the server (Helm release %s)", o.Release)
			if rel, err = apply(ctx, hc, ch, o, rel, vals); err != nil {
				return nil, err
			}
		}
		if err := c.waitReady(ctx, o, p, []string{"server"}); err != nil {
			return nil, err
		}
		admin, err := c.admin(ctx)
		if err != nil {
			return nil, err
		}
		p.step("Creating the node pool %s: its identity, and the node agents' credentials", o.NodePool)
		id, secret, err := c.nodePool(ctx, o, admin, caPEM, state)
		if err != nil {
			return nil, err
		}
		if err := c.writeNodePool(ctx, o.Release, id, secret, labels); err != nil {
			return nil, err
		}
		state = &id
	} else {
		p.step("Found the node pool %s (identity %s)", state.NodePool, state.ClientID)
	}

	verb := "Installing"
	if res.Upgraded {
		verb = "Upgrading"
	}
	p.step("%s Coffer (Helm release %s): the server, the CSI driver and provider, the node agent and the webhook", verb, o.Release)
	if rel, err = apply(ctx, hc, ch, o, rel, full(*state)); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx, o, p, components(full(*state))); err != nil {
		return nil, err
	}
	if err := c.waitNode(ctx, o, p, full(*state)); err != nil {
		return nil, err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return nil, err
	}
	res.Revision, res.Identity, res.Admin = rel.revision, *state, admin
	return res, nil
}

// releaseInfo is what Install needs of an existing release.
type releaseInfo struct {
	revision int
}

func current(hc *action.Configuration, name string) (*releaseInfo, error) {
	r, err := action.NewGet(hc).Run(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading Helm release %s: %w", name, err)
	}
	acc, err := release.NewAccessor(r)
	if err != nil {
		return nil, err
	}
	return &releaseInfo{revision: acc.Version()}, nil
}

// apply installs the release, or upgrades it, with vals, and waits for
// nothing: the waits that follow show their progress.
func apply(ctx context.Context, hc *action.Configuration, ch *chartv2.Chart, o Options, rel *releaseInfo, vals map[string]any) (*releaseInfo, error) {
	var r release.Releaser
	var err error
	if rel == nil {
		in := action.NewInstall(hc)
		in.ReleaseName, in.Namespace = o.Release, o.Namespace
		// The CRDs are Install's own (labelled, so Uninstall removes
		// those it created): Helm never deletes a chart's crds/.
		in.SkipCRDs = true
		in.WaitStrategy = kube.HookOnlyStrategy
		in.Timeout = o.Timeout
		r, err = in.RunWithContext(ctx, ch, vals)
	} else {
		up := action.NewUpgrade(hc)
		up.Namespace = o.Namespace
		up.SkipCRDs = true
		up.WaitStrategy = kube.HookOnlyStrategy
		up.Timeout = o.Timeout
		up.ServerSideApply = "auto"
		r, err = up.RunWithContext(ctx, o.Release, ch, vals)
	}
	if err != nil {
		return nil, fmt.Errorf("helm: %w", err)
	}
	acc, err := release.NewAccessor(r)
	if err != nil {
		return nil, err
	}
	return &releaseInfo{revision: acc.Version()}, nil
}

// managedValues are the chart values Install sets: the names of what it
// creates.
func managedValues(suffix string) map[string]any {
	return map[string]any{
		"server": map[string]any{
			"enabled":         true,
			"dnsSuffix":       suffix,
			"tls":             map[string]any{"secretName": tlsSecret},
			"rootKey":         map[string]any{"secretName": rootKeySecret, "key": rootKeyKey},
			"adminSecretName": adminSecret,
		},
		"authority": map[string]any{"caConfigMap": caConfigMap},
		"nodeAgent": map[string]any{"credentialsSecret": agentSecret},
	}
}

// dnsSuffix is the server's DNS suffix, from the option or the values.
func dnsSuffix(o Options) (string, error) {
	fromValues, _ := lookup(o.Values, "server.dnsSuffix").(string)
	switch {
	case o.DNSSuffix != "" && fromValues != "" && o.DNSSuffix != fromValues:
		return "", &ValueConflictError{Path: "server.dnsSuffix", Given: fromValues, Want: o.DNSSuffix, Why: "--dns-suffix says otherwise"}
	case o.DNSSuffix != "":
		return o.DNSSuffix, nil
	case fromValues != "":
		return fromValues, nil
	}
	return "", daemon.Invalid("DNSSuffix", "is required (or server.dnsSuffix in the values): vaults are served at https://{vault}.{suffix}/, and the server's certificate is made for it")
}

func publicPort(vals map[string]any) int {
	switch v := lookup(vals, "server.publicPort").(type) {
	case int:
		return v
	case int64:
		return int(v)
	case float64:
		return int(v)
	}
	return 8443
}

// lookup returns the value at a dotted path, or nil.
func lookup(vals map[string]any, path string) any {
	var cur any = vals
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

// checkValues refuses values that disagree with what Install sets, and
// values the chart itself refuses, before anything is created.
func checkValues(ch *chartv2.Chart, o Options, suffix string) error {
	managed := managedValues(suffix)
	managed["tenantID"] = ""
	managed["nodeAgent"].(map[string]any)["systemIdentity"] = ""
	var conflict error
	walk(managed, "", func(path string, want any) {
		given := lookup(o.Values, path)
		if conflict != nil || given == nil {
			return
		}
		switch path {
		case "tenantID", "nodeAgent.systemIdentity":
			if s, _ := given.(string); s != "" {
				conflict = &ValueConflictError{Path: path, Given: s, Why: "coffer install sets it from the tenant and the node pool it creates"}
			}
			return
		}
		if fmt.Sprint(given) != fmt.Sprint(want) {
			why := "coffer install creates it under that name"
			if path == "server.enabled" {
				why = "coffer install runs the server"
			}
			conflict = &ValueConflictError{Path: path, Given: fmt.Sprint(given), Want: fmt.Sprint(want), Why: why}
		}
	})
	if conflict != nil {
		return conflict
	}
	vals := Merge(Merge(map[string]any{}, o.Values), managed)
	Merge(vals, map[string]any{"tenantID": "00000000-0000-0000-0000-000000000000",
		"nodeAgent": map[string]any{"systemIdentity": "00000000-0000-0000-0000-000000000000"}})
	if _, err := Render(ch, o.Release, o.Namespace, vals); err != nil {
		return &ChartValuesError{Err: err}
	}
	return nil
}

func walk(m map[string]any, prefix string, fn func(path string, v any)) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		if sub, ok := m[k].(map[string]any); ok {
			walk(sub, path, fn)
			continue
		}
		fn(path, m[k])
	}
}

// components are the workloads the values enable.
func components(vals map[string]any) []string {
	out := []string{"server"}
	for _, c := range []struct {
		component string
		values    []string // any of them false turns the component off
	}{
		// The Azure provider chart's names for the driver are aliases
		// (templates/_aliases.tpl); the chart refuses a pair that disagrees
		// before this runs, so any false among them means off.
		{"csi-driver", []string{"linux.enabled", "secrets-store-csi-driver.linux.enabled", "secrets-store-csi-driver.install"}},
		{"provider", []string{"provider.enabled"}}, {"node-agent", []string{"nodeAgent.enabled"}}, {"webhook", []string{"webhook.enabled"}},
	} {
		on := true
		for _, path := range c.values {
			on = on && !isFalse(lookup(vals, path))
		}
		if on {
			out = append(out, c.component)
		}
	}
	// The sync controller is off unless asked for, as in the chart.
	if v, ok := lookup(vals, "syncController.enabled").(bool); ok && v {
		out = append(out, "sync-controller")
	}
	return out
}

// isFalse reports whether v is false: a bool, or the string a Terraform
// `set` with type string or a --set-string gives.
func isFalse(v any) bool {
	switch v := v.(type) {
	case bool:
		return !v
	case string:
		return strings.EqualFold(v, "false")
	}
	return false
}

func (c *cluster) ensureNamespace(ctx context.Context, labels map[string]string, p progress) error {
	_, err := c.cs.CoreV1().Namespaces().Get(ctx, c.ns, metav1.GetOptions{})
	if err == nil {
		p.detail("namespace %s exists", c.ns)
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading namespace %s: %w", c.ns, err)
	}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating namespace %s: %w", c.ns, err)
	}
	p.detail("created namespace %s", c.ns)
	return nil
}

// ensureCRDs creates the chart's CRDs that the cluster lacks, labelled as
// Install's, and waits until they are served. CRDs that exist (another
// installation's, or the upstream driver's) are left as they are.
func (c *cluster) ensureCRDs(ctx context.Context, ch *chartv2.Chart, labels map[string]string, p progress) error {
	var made []string
	for _, crd := range ch.CRDObjects() {
		for _, doc := range bytes.Split(crd.File.Data, []byte("\n---")) {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(doc, &u.Object); err != nil {
				return fmt.Errorf("%s: %w", crd.Filename, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			var cur apiextensionsv1.CustomResourceDefinition
			err := c.kc.Get(ctx, client.ObjectKey{Name: u.GetName()}, &cur)
			if err == nil {
				continue
			}
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("reading CRD %s: %w", u.GetName(), err)
			}
			l := u.GetLabels()
			if l == nil {
				l = map[string]string{}
			}
			maps.Copy(l, labels)
			u.SetLabels(l)
			if err := c.kc.Create(ctx, u); err != nil {
				return fmt.Errorf("creating CRD %s: %w", u.GetName(), err)
			}
			made = append(made, u.GetName())
		}
	}
	if len(made) == 0 {
		p.detail("the CRDs exist")
		return nil
	}
	p.detail("created the CRDs %s", strings.Join(made, ", "))
	return waitFor(ctx, 2*time.Minute, "the CRDs to be established", func() (bool, string) {
		for _, name := range made {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := c.kc.Get(ctx, client.ObjectKey{Name: name}, &crd); err != nil {
				return false, err.Error()
			}
			ok := false
			for _, cond := range crd.Status.Conditions {
				ok = ok || (cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue)
			}
			if !ok {
				return false, name + " is not established"
			}
		}
		return true, ""
	})
}

func (c *cluster) secretExists(ctx context.Context, name string) bool {
	_, err := c.cs.CoreV1().Secrets(c.ns).Get(ctx, name, metav1.GetOptions{})
	return err == nil
}

// admin reads the first administrator's credentials, which the server's
// init container stored.
func (c *cluster) admin(ctx context.Context) (devenv.Env, error) {
	var s *corev1.Secret
	err := waitFor(ctx, time.Minute, "the administrator's Secret "+adminSecret, func() (bool, string) {
		var err error
		s, err = c.cs.CoreV1().Secrets(c.ns).Get(ctx, adminSecret, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if err != nil {
		return devenv.Env{}, err
	}
	env, err := devenv.Parse(bytes.NewReader(s.Data["dev.env"]))
	if err != nil {
		return devenv.Env{}, fmt.Errorf("the Secret %s/%s: %w", c.ns, adminSecret, err)
	}
	return env, nil
}

// progress prints Install's steps for a person watching.
type progress struct{ w io.Writer }

func (p progress) step(format string, args ...any) { fmt.Fprintf(p.w, "• "+format+"\n", args...) }

func (p progress) detail(format string, args ...any) { fmt.Fprintf(p.w, "    "+format+"\n", args...) }

// waitFor polls cond every half second until it holds, ctx ends or the
// timeout passes; the error then says what cond last said.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return &TimeoutError{What: what, After: timeout, Last: why}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
