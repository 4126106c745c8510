package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	"helm.sh/helm/v4/pkg/storage/driver"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// UninstallOptions say which installation to remove.
type UninstallOptions struct {
	Kubeconfig, Context string
	Namespace, Release  string
	// Timeout bounds the wait for the pods and the namespace to go
	// (default 5 minutes).
	Timeout time.Duration
	Out     io.Writer
	Log     *slog.Logger
}

// Uninstall removes what Install created, and only that: the Helm release
// (and with it every object of the chart), the objects Install labelled
// as its own (the namespace if it made it, the Secrets and ConfigMaps,
// the CRDs it created), and what the chart's pods made at run time (the
// administrator's Secret, the webhook's certificate, the server's volume
// claims). Objects of the same names that Install found and used are
// left. With the etcd engine, the store's keys stay in etcd, which
// Install did not create: remove them with etcdctl (the prefix is
// server.storage.etcd.prefix).
func Uninstall(ctx context.Context, o UninstallOptions) error {
	if o.Namespace == "" {
		o.Namespace = "coffer-system"
	}
	if o.Release == "" {
		o.Release = "coffer"
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
	p := progress{o.Out}
	p.step("Connecting to the cluster")
	c, err := connect(ctx, o.Kubeconfig, o.Context, o.Namespace)
	if err != nil {
		return err
	}
	p.detail("%s", c.cfg.Host)
	if err := c.checkAccess(ctx, uninstallNeeds(o.Namespace)); err != nil {
		return err
	}
	hc, err := c.helm(o.Log)
	if err != nil {
		return err
	}
	p.step("Uninstalling the Helm release %s", o.Release)
	un := action.NewUninstall(hc)
	un.WaitStrategy = kube.HookOnlyStrategy
	un.Timeout = o.Timeout
	if _, err := un.Run(o.Release); errors.Is(err, driver.ErrReleaseNotFound) {
		p.detail("there is no release %s in %s", o.Release, o.Namespace)
	} else if err != nil {
		return fmt.Errorf("helm: %w", err)
	} else {
		p.detail("removed the chart's objects")
	}
	err = waitFor(ctx, o.Timeout, "Coffer's pods to go", func() (bool, string) {
		l, err := c.cs.CoreV1().Pods(o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector(o.Release, "")})
		if err != nil {
			return false, err.Error()
		}
		return len(l.Items) == 0, fmt.Sprintf("%d pods remain", len(l.Items))
	})
	if err != nil {
		return err
	}
	p.detail("Coffer's pods are gone")

	// What the chart's pods made while they ran.
	secrets := c.cs.CoreV1().Secrets(o.Namespace)
	made := []struct{ name, label, value string }{
		{adminSecret, "app.kubernetes.io/part-of", "coffer"},
		{fmt.Sprintf(webhookCertFmt, o.Release), LabelManagedBy, "coffer-webhook"},
	}
	for _, m := range made {
		s, err := secrets.Get(ctx, m.name, metav1.GetOptions{})
		if err == nil && s.Labels[m.label] == m.value {
			if err := secrets.Delete(ctx, m.name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting Secret %s: %w", m.name, err)
			}
			p.detail("deleted Secret %s", m.name)
		}
	}
	pvcs := c.cs.CoreV1().PersistentVolumeClaims(o.Namespace)
	if err := pvcs.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: selector(o.Release, "server")}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the server's volume claims: %w", err)
	}

	// Install's own objects.
	mine := metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy + "," + LabelInstance + "=" + o.Release}
	sl, err := secrets.List(ctx, mine)
	if err != nil {
		return err
	}
	for _, s := range sl.Items {
		if s.Type == "helm.sh/release.v1" {
			continue // Helm's, gone with the release
		}
		if err := secrets.Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting Secret %s: %w", s.Name, err)
		}
		p.detail("deleted Secret %s", s.Name)
	}
	cms := c.cs.CoreV1().ConfigMaps(o.Namespace)
	cl, err := cms.List(ctx, mine)
	if err != nil {
		return err
	}
	for _, cm := range cl.Items {
		if err := cms.Delete(ctx, cm.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting ConfigMap %s: %w", cm.Name, err)
		}
		p.detail("deleted ConfigMap %s", cm.Name)
	}
	var crds apiextensionsv1.CustomResourceDefinitionList
	if err := c.kc.List(ctx, &crds, client.MatchingLabels{LabelManagedBy: ManagedBy, LabelInstance: o.Release}); err != nil {
		return err
	}
	for i := range crds.Items {
		if err := c.kc.Delete(ctx, &crds.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting CRD %s: %w", crds.Items[i].Name, err)
		}
		p.detail("deleted CRD %s (and its objects)", crds.Items[i].Name)
	}
	err = waitFor(ctx, o.Timeout, "the CRDs to go", func() (bool, string) {
		var l apiextensionsv1.CustomResourceDefinitionList
		if err := c.kc.List(ctx, &l, client.MatchingLabels{LabelManagedBy: ManagedBy, LabelInstance: o.Release}); err != nil {
			return false, err.Error()
		}
		return len(l.Items) == 0, fmt.Sprintf("%d remain", len(l.Items))
	})
	if err != nil {
		return err
	}

	ns, err := c.cs.CoreV1().Namespaces().Get(ctx, o.Namespace, metav1.GetOptions{})
	if err == nil && ours(ns) && ns.Labels[LabelInstance] == o.Release {
		p.step("Deleting namespace %s", o.Namespace)
		if err := c.cs.CoreV1().Namespaces().Delete(ctx, o.Namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting namespace %s: %w", o.Namespace, err)
		}
		err := waitFor(ctx, o.Timeout, "namespace "+o.Namespace+" to go", func() (bool, string) {
			_, err := c.cs.CoreV1().Namespaces().Get(ctx, o.Namespace, metav1.GetOptions{})
			return apierrors.IsNotFound(err), "it is terminating"
		})
		if err != nil {
			return err
		}
		p.detail("namespace %s is gone", o.Namespace)
	} else if err == nil {
		p.detail("namespace %s was not made by coffer install: it stays", o.Namespace)
	}
	p.step("Coffer is uninstalled")
	return nil
}
