package webhook

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// review is the AdmissionReview the apiserver sends for creating a pod.
func review(pod string, edit ...func(*admissionv1.AdmissionRequest)) string {
	req := &admissionv1.AdmissionRequest{
		UID: "705ab4f5-6393-11e8-b7cc-42010a800002", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, RequestKind: &metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		RequestResource: &metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "ns", Operation: admissionv1.Create,
		Object: runtime.RawExtension{Raw: []byte(pod)},
	}
	for _, e := range edit {
		e(req)
	}
	r := admissionv1.AdmissionReview{Request: req}
	r.SetGroupVersionKind(reviewGVK)
	b, _ := json.Marshal(r)
	return string(b)
}

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzAdmissionReview", func(*testing.T) []fuzzseed.Seed {
		const ct = "application/json"
		// Pods from Azure workload identity's quick start and the seed
		// articles, as the apiserver serializes them.
		labelled := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"quick-start","namespace":"ns","labels":{"azure.workload.identity/use":"true"}},"spec":{"serviceAccountName":"app","containers":[{"name":"oidc","image":"ghcr.io/azure/azure-workload-identity/msal-go","env":[{"name":"KEYVAULT_URL","value":"https://demo.vault.coffer.example:8443/"},{"name":"SECRET_NAME","value":"my-secret"}]}],"nodeSelector":{"kubernetes.io/os":"linux"}}}`
		generated := `{"metadata":{"generateName":"web-7d9f8b6c5-","namespace":"ns","labels":{"azure.workload.identity/use":"true","app":"web"},"annotations":{"azure.workload.identity/skip-containers":"istio-proxy;typo","azure.workload.identity/service-account-token-expiration":"86400"}},"spec":{"initContainers":[{"name":"init","image":"busybox"}],"containers":[{"name":"web","image":"nginx","volumeMounts":[{"name":"cache","mountPath":"/cache"}]},{"name":"istio-proxy","image":"istio/proxyv2"}],"volumes":[{"name":"cache","emptyDir":{}}]}}`
		preset := `{"metadata":{"name":"p","labels":{"azure.workload.identity/use":"true"}},"spec":{"serviceAccountName":"app","containers":[{"name":"app","image":"app","env":[{"name":"AZURE_CLIENT_ID","value":"user-set-client-id"},{"name":"AZURE_AUTHORITY_HOST","valueFrom":{"configMapKeyRef":{"name":"cfg","key":"host"}}}],"volumeMounts":[{"name":"azure-identity-token","mountPath":"/elsewhere"}]}],"volumes":[{"name":"azure-identity-token","secret":{"secretName":"x"}}]}}`
		unlabelled := `{"metadata":{"name":"plain","namespace":"ns"},"spec":{"containers":[{"name":"c","image":"i"}]}}`
		return []fuzzseed.Seed{
			fuzzseed.S("quick-start", ct, review(labelled)),
			fuzzseed.S("deployment-pod", ct, review(generated)),
			fuzzseed.S("already-set", ct, review(preset)),
			fuzzseed.S("unlabelled", ct, review(unlabelled)),
			fuzzseed.S("no-service-account", ct, review(strings.Replace(labelled, `"serviceAccountName":"app",`, ``, 1))),
			fuzzseed.S("unknown-service-account", ct, review(strings.Replace(labelled, `"serviceAccountName":"app"`, `"serviceAccountName":"nobody"`, 1))),
			fuzzseed.S("bad-expiration", ct, review(strings.Replace(generated, `"86400"`, `"60"`, 1))),
			fuzzseed.S("update-operation", ct, review(labelled, func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update })),
			fuzzseed.S("deployment-resource", ct, review(`{"kind":"Deployment"}`, func(r *admissionv1.AdmissionRequest) {
				r.Resource = metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
			})),
			fuzzseed.S("ephemeral-subresource", ct, review(labelled, func(r *admissionv1.AdmissionRequest) { r.SubResource = "ephemeralcontainers" })),
			fuzzseed.S("object-not-a-pod", ct, review(`{"spec":{"containers":"nope"}}`)),
			fuzzseed.S("future-fields", ct, review(strings.Replace(labelled, `"spec":{`, `"spec":{"futureField":{"x":1},`, 1))),
			fuzzseed.S("v1beta1", ct, strings.Replace(review(labelled), `"admission.k8s.io/v1"`, `"admission.k8s.io/v1beta1"`, 1)),
			fuzzseed.S("no-request", ct, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`),
			fuzzseed.S("not-json", ct, `apiVersion: admission.k8s.io/v1`),
			fuzzseed.S("wrong-content-type", "text/plain", review(labelled)),
			fuzzseed.S("charset", "application/json; charset=utf-8", review(labelled)),
		}
	})
}

// FuzzAdmissionReview posts arbitrary AdmissionReview bodies to the
// webhook. A body that is not a v1 review is refused with a 4xx; any other
// gets a v1 review answering its uid, never a 500. A patch applies to the
// pod as decoded, touches only the spec, leaves every variable the pod set
// as it was, and gives the pod Mutate returns; admitting the patched pod
// again changes nothing (the apiserver may reinvoke the webhook). No
// warning carries a variable's value.
func FuzzAdmissionReview(f *testing.F) {
	h, err := NewHandler(HandlerConfig{Config: testConfig, ServiceAccounts: newAccounts(annotatedSA)})
	if err != nil {
		f.Fatal(err)
	}
	post := func(t *testing.T, contentType, body string) (int, []byte) {
		r := httptest.NewRequest(http.MethodPost, "https://webhook.coffer-system.svc:443/mutate", strings.NewReader(body))
		r.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		out, _ := io.ReadAll(w.Result().Body)
		return w.Code, out
	}
	f.Fuzz(func(t *testing.T, contentType, body string) {
		code, out := post(t, contentType, body)
		if code != http.StatusOK {
			if code < 400 || code >= 500 {
				t.Fatalf("answered %d: %s", code, out)
			}
			return
		}
		var in, resp admissionv1.AdmissionReview
		if err := json.Unmarshal([]byte(body), &in); err != nil || in.Request == nil {
			t.Fatalf("200 for a body that is not a review: %v", err)
		}
		if err := json.Unmarshal(out, &resp); err != nil || resp.GroupVersionKind() != reviewGVK || resp.Response == nil || resp.Response.UID != in.Request.UID {
			t.Fatalf("the answer is not a v1 review of uid %q: %s", in.Request.UID, out)
		}
		r := resp.Response
		if r.Result != nil && r.Result.Code >= 500 {
			t.Fatalf("answered the review with %d: %s", r.Result.Code, r.Result.Message)
		}
		var pod corev1.Pod
		if json.Unmarshal(in.Request.Object.Raw, &pod) != nil {
			return
		}
		// What warnings may name: containers, the service account, and
		// the pod's annotations.
		named := ServiceAccountName(&pod) + "\x00" + in.Request.Namespace
		for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
			named += "\x00" + c.Name
		}
		for _, v := range pod.Annotations {
			named += "\x00" + v
		}
		for _, w := range r.Warnings {
			for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
				for _, e := range c.Env {
					if len(e.Value) >= 8 && strings.Contains(w, e.Value) && !strings.Contains(named, e.Value) {
						t.Fatalf("warning %q carries the value of %s", w, e.Name)
					}
				}
			}
		}
		if len(r.Patch) == 0 {
			return
		}
		var ops []struct{ Op, Path string }
		json.Unmarshal(r.Patch, &ops)
		for _, op := range ops {
			if !strings.HasPrefix(op.Path, "/spec/") {
				t.Fatalf("the patch touches %s", op.Path)
			}
		}
		decoded, _ := json.Marshal(&pod)
		patch, err := jsonpatch.DecodePatch(r.Patch)
		if err != nil {
			t.Fatalf("the patch does not decode: %v", err)
		}
		patched, err := patch.Apply(decoded)
		if err != nil {
			t.Fatalf("the patch does not apply to the pod: %v", err)
		}
		var after corev1.Pod
		if err := json.Unmarshal(patched, &after); err != nil {
			t.Fatal(err)
		}
		want, _, err := Mutate(&pod, annotatedSAFor(&pod, in.Request.Namespace), testConfig)
		if err != nil || !reflect.DeepEqual(&after, want) {
			t.Fatalf("the patched pod is not what Mutate returns (%v)", err)
		}
		for i, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
			got := append(after.Spec.InitContainers, after.Spec.Containers...)[i]
			// The webhook only appends: the pod's own variables stay, in
			// order, even duplicated or unnamed ones (the API server
			// validates names after admission).
			if len(got.Env) < len(c.Env) || (len(c.Env) > 0 && !reflect.DeepEqual(got.Env[:len(c.Env)], c.Env)) {
				t.Fatalf("container %s: the pod's own variables changed", c.Name)
			}
		}
		again := bytes.Replace([]byte(body), in.Request.Object.Raw, patched, 1)
		if !bytes.Contains(again, patched) {
			return // the raw object was written differently in the body
		}
		code, out = post(t, contentType, string(again))
		var second admissionv1.AdmissionReview
		if code != http.StatusOK || json.Unmarshal(out, &second) != nil || second.Response == nil || len(second.Response.Patch) != 0 {
			t.Fatalf("admitting the patched pod again: %d %s", code, out)
		}
	})
}

// annotatedSAFor is the service account the handler reads for pod: the
// accounts reader holds annotatedSA only.
func annotatedSAFor(pod *corev1.Pod, ns string) *corev1.ServiceAccount {
	if ServiceAccountName(pod) == annotatedSA.Name && ns == annotatedSA.Namespace {
		return annotatedSA
	}
	return nil
}
