// Package webhook_test runs Coffer's workload identity webhook against a
// real kube-apiserver: the apiserver calls it over HTTPS for pods it
// admits, trusting the CA the webhook published itself, and the
// configuration it injects signs in to a real Coffer server with a real
// service-account token.
package webhook_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/webhook"
)

// webhookConfigName is the MutatingWebhookConfiguration the tests create.
const webhookConfigName = "coffer-workload-identity"

// runningWebhook is the webhook serving on loopback.
type runningWebhook struct {
	rotator *webhook.Rotator
	url     string
}

// startWebhook registers a MutatingWebhookConfiguration for labelled pods
// that points at https://127.0.0.1:{port}/mutate with an empty caBundle,
// as an installer would before the webhook has a certificate, then starts
// the webhook through the daemon entry point that `coffer webhook` uses,
// and waits until the apiserver calls it successfully.
func startWebhook(t *testing.T, kube *kubetest.Env, cfg webhook.Config) *runningWebhook {
	t.Helper()
	createNamespace(t, kube, "coffer-system")
	ctx, cancel := context.WithCancel(context.Background())
	d, err := webhook.NewDaemon(ctx, webhook.Options{
		Listen: "127.0.0.1:0", TenantID: cfg.TenantID, AuthorityHost: cfg.AuthorityHost,
		SecretNamespace: "coffer-system", SecretName: "coffer-webhook-cert", CertHosts: []string{"127.0.0.1"},
		WebhookConfigName: webhookConfigName, Kube: kube.Config, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://%s/mutate", d.Addr())
	createWebhookConfig(t, kube, url)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook: %v", err)
		}
	})
	waitAdmission(t, kube)
	return &runningWebhook{rotator: d.Rotator, url: url}
}

// createWebhookConfig registers the webhook as its documentation says.
func createWebhookConfig(t *testing.T, kube *kubetest.Env, url string) {
	t.Helper()
	fail, none, timeout := admissionregistrationv1.Fail, admissionregistrationv1.SideEffectClassNone, int32(10)
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: webhookConfigName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "pods.workload-identity.coffer.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			ObjectSelector:          &metav1.LabelSelector{MatchLabels: map[string]string{webhook.UseLabel: "true"}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
		}},
	}
	if err := kube.Client.Create(context.Background(), mwc); err != nil {
		t.Fatal(err)
	}
}

// waitAdmission waits until the apiserver admits a labelled pod through the
// webhook: the caBundle is published, and the apiserver has picked up the
// updated configuration, which it does asynchronously. The probe is a
// dry run, so it leaves nothing behind.
func waitAdmission(t *testing.T, kube *kubetest.Env) {
	t.Helper()
	probe := labelledPod("probe", "default")
	quiet := warningClient(t, kube, nil)
	var last error
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		_, last = quiet.CoreV1().Pods("default").Create(context.Background(), probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the apiserver never admitted a pod through the webhook: %v", last)
}

func createNamespace(t *testing.T, kube *kubetest.Env, name string) {
	t.Helper()
	err := kube.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func labelledPod(name, sa string, containers ...corev1.Container) *corev1.Pod {
	if len(containers) == 0 {
		containers = []corev1.Container{{Name: "app", Image: "app"}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{webhook.UseLabel: "true"}},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, Containers: containers},
	}
}

// warningClient is a clientset whose warnings land in w, or are dropped
// if w is nil.
func warningClient(t *testing.T, kube *kubetest.Env, w *kubetest.Warnings) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(kube.Config)
	cfg.WarningHandler = rest.NoWarnings{}
	if w != nil {
		cfg.WarningHandler = w
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// envOf returns a container's env as a map, and fails on valueFrom.
func envOf(t *testing.T, pod *corev1.Pod, container string) map[string]string {
	t.Helper()
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name != container {
			continue
		}
		out := map[string]string{}
		for _, e := range c.Env {
			out[e.Name] = e.Value
		}
		return out
	}
	t.Fatalf("pod %s has no container %s", pod.Name, container)
	return nil
}

func containsAll(list []string, subs ...string) bool {
	for _, s := range subs {
		found := false
		for _, l := range list {
			found = found || strings.Contains(l, s)
		}
		if !found {
			return false
		}
	}
	return true
}
