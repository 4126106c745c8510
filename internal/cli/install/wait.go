package install

import (
	"context"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// workload is one component's readiness.
type workload struct {
	kind              string
	desired, ready    int32
	updated, observed bool
}

func (w workload) done() bool {
	return w.desired > 0 && w.ready >= w.desired && w.updated && w.observed
}

// waitReady waits until the components' workloads have every replica
// ready and up to date, printing each change of their state: so many of
// so many ready, and what the pods that are not are waiting for.
func (c *cluster) waitReady(ctx context.Context, o Options, p progress, comps []string) error {
	printed := map[string]string{}
	return waitFor(ctx, o.Timeout, "Coffer's pods ("+strings.Join(comps, ", ")+") to be ready", func() (bool, string) {
		var notReady []string
		for _, comp := range comps {
			w, err := c.workload(ctx, o.Release, comp)
			line := ""
			switch {
			case err != nil:
				line = err.Error()
			case w.desired == 0:
				line = "no " + w.kind + " yet"
			default:
				line = fmt.Sprintf("%d/%d ready", w.ready, w.desired)
				if why := c.podStates(ctx, o.Release, comp); why != "" && !w.done() {
					line += " (" + why + ")"
				}
			}
			if printed[comp] != line {
				p.detail("%-11s %s", comp+":", line)
				printed[comp] = line
			}
			if err != nil || !w.done() {
				notReady = append(notReady, comp+": "+line)
			}
		}
		return len(notReady) == 0, strings.Join(notReady, "; ")
	})
}

func (c *cluster) workload(ctx context.Context, release, comp string) (workload, error) {
	opts := metav1.ListOptions{LabelSelector: selector(release, comp)}
	apps := c.cs.AppsV1()
	if comp == "csi-driver" || comp == "provider" || comp == "node-agent" {
		l, err := apps.DaemonSets(c.ns).List(ctx, opts)
		if err != nil || len(l.Items) == 0 {
			return workload{kind: "DaemonSet"}, err
		}
		d := l.Items[0]
		return workload{"DaemonSet", d.Status.DesiredNumberScheduled, d.Status.NumberReady,
			d.Status.UpdatedNumberScheduled == d.Status.DesiredNumberScheduled, d.Status.ObservedGeneration == d.Generation}, nil
	}
	if l, err := apps.StatefulSets(c.ns).List(ctx, opts); err != nil {
		return workload{}, err
	} else if len(l.Items) > 0 {
		s := l.Items[0]
		return workload{"StatefulSet", replicas(s.Spec.Replicas), s.Status.ReadyReplicas,
			s.Status.UpdatedReplicas == replicas(s.Spec.Replicas) || s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType,
			s.Status.ObservedGeneration == s.Generation}, nil
	}
	l, err := apps.Deployments(c.ns).List(ctx, opts)
	if err != nil || len(l.Items) == 0 {
		return workload{kind: "Deployment"}, err
	}
	d := l.Items[0]
	// A Deployment's old pods may still be terminating: ready counts the
	// new ones only once they are all there.
	return workload{"Deployment", replicas(d.Spec.Replicas), d.Status.ReadyReplicas,
		d.Status.UpdatedReplicas == replicas(d.Spec.Replicas) && d.Status.Replicas == d.Status.UpdatedReplicas,
		d.Status.ObservedGeneration == d.Generation}, nil
}

func replicas(n *int32) int32 {
	if n == nil {
		return 1
	}
	return *n
}

// podStates says what a component's pods that are not ready wait for,
// as `kubectl get pods` shows it (Init:0/1, ContainerCreating,
// CrashLoopBackOff, ...).
func (c *cluster) podStates(ctx context.Context, release, comp string) string {
	l, err := c.cs.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: selector(release, comp)})
	if err != nil {
		return ""
	}
	var out []string
	for i := range l.Items {
		pod := &l.Items[i]
		if ready(pod) {
			continue
		}
		out = append(out, pod.Name+": "+podState(pod))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func podState(p *corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return "Terminating"
	}
	for i, cs := range p.Status.InitContainerStatuses {
		if t := cs.State.Terminated; t != nil && t.ExitCode == 0 {
			continue
		}
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "PodInitializing" {
			return "Init:" + w.Reason
		}
		return fmt.Sprintf("Init:%d/%d", i, len(p.Spec.InitContainers))
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return w.Reason
		}
		if cs.State.Running != nil && !cs.Ready {
			return "Running, not ready"
		}
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse {
			return "Pending: " + cond.Message
		}
	}
	return string(p.Status.Phase)
}

// waitNode waits for what the node components publish once they run: the
// driver's registration with every node's kubelet, and the webhook's CA
// in its configuration. Until then a mount, or the admission of a pod
// that asks for workload identity, would fail.
func (c *cluster) waitNode(ctx context.Context, o Options, p progress, vals map[string]any) error {
	comps := components(vals)
	if slices.Contains(comps, "csi-driver") {
		err := waitFor(ctx, o.Timeout, "the CSI driver's registration with the kubelets", func() (bool, string) {
			ds, err := c.workload(ctx, o.Release, "csi-driver")
			if err != nil {
				return false, err.Error()
			}
			var nodes storagev1.CSINodeList
			if err := c.kc.List(ctx, &nodes); err != nil {
				return false, err.Error()
			}
			n := int32(0)
			for _, node := range nodes.Items {
				for _, d := range node.Spec.Drivers {
					if d.Name == "secrets-store.csi.k8s.io" {
						n++
					}
				}
			}
			return n >= ds.desired, fmt.Sprintf("%d of %d kubelets know the driver", n, ds.desired)
		})
		if err != nil {
			return err
		}
		p.detail("the CSI driver is registered with the kubelets")
	}
	if slices.Contains(comps, "webhook") {
		name := o.Release + "-workload-identity"
		err := waitFor(ctx, o.Timeout, "the webhook to publish its CA", func() (bool, string) {
			u := &unstructured.Unstructured{}
			u.SetAPIVersion("admissionregistration.k8s.io/v1")
			u.SetKind("MutatingWebhookConfiguration")
			if err := c.kc.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
				return false, err.Error()
			}
			hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
			for _, h := range hooks {
				b, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "caBundle")
				if b == "" {
					return false, "MutatingWebhookConfiguration " + name + " has no caBundle yet"
				}
			}
			return len(hooks) > 0, "no webhooks in " + name
		})
		if err != nil {
			return err
		}
		p.detail("the webhook's CA is published")
	}
	return nil
}
