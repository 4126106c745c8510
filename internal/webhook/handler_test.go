package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// accounts is a ServiceAccountReader over a map; err, if set, is every
// read's answer.
type accounts struct {
	sas   map[client.ObjectKey]*corev1.ServiceAccount
	err   error
	reads int
}

func (a *accounts) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	a.reads++
	if a.err != nil {
		return a.err
	}
	sa, ok := a.sas[key]
	if !ok {
		return apierrors.NewNotFound(corev1.Resource("serviceaccounts"), key.Name)
	}
	sa.DeepCopyInto(obj.(*corev1.ServiceAccount))
	return nil
}

func newAccounts(sas ...*corev1.ServiceAccount) *accounts {
	a := &accounts{sas: map[client.ObjectKey]*corev1.ServiceAccount{}}
	for _, sa := range sas {
		a.sas[client.ObjectKeyFromObject(sa)] = sa
	}
	return a
}

func testHandler(t *testing.T, cfg HandlerConfig) *httptest.Server {
	t.Helper()
	if cfg.Config == (Config{}) {
		cfg.Config = testConfig
	}
	if cfg.ServiceAccounts == nil {
		cfg.ServiceAccounts = newAccounts(annotatedSA)
	}
	h, err := NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// reviewOf is the AdmissionReview the apiserver sends for creating pod in
// its namespace.
func reviewOf(t *testing.T, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	r := admissionv1.AdmissionReview{Request: &admissionv1.AdmissionRequest{
		UID:       types.UID("uid-1"),
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: pod.Namespace,
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}}
	r.SetGroupVersionKind(reviewGVK)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(t *testing.T, srv *httptest.Server, contentType string, body []byte) (int, string) {
	t.Helper()
	resp, err := http.Post(srv.URL+"/mutate", contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// admit posts pod and returns the decoded response.
func admit(t *testing.T, srv *httptest.Server, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	return admitRaw(t, srv, reviewOf(t, pod))
}

// admitRaw posts a review and returns the decoded response.
func admitRaw(t *testing.T, srv *httptest.Server, review []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	code, body := post(t, srv, "application/json", review)
	if code != http.StatusOK {
		t.Fatalf("POST /mutate: %d %s", code, body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	if out.GroupVersionKind() != reviewGVK || out.Response == nil || out.Response.UID != "uid-1" {
		t.Fatalf("response review %s", body)
	}
	return out.Response
}

type patchOp struct {
	Op, Path string
	Value    json.RawMessage
}

func patchOps(t *testing.T, r *admissionv1.AdmissionResponse) []patchOp {
	t.Helper()
	if len(r.Patch) == 0 {
		return nil
	}
	if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", r.PatchType)
	}
	var ops []patchOp
	if err := json.Unmarshal(r.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	return ops
}

func TestHandlerAdmits(t *testing.T) {
	srv := testHandler(t, HandlerConfig{})

	r := admit(t, srv, testPod())
	ops := patchOps(t, r)
	if !r.Allowed || len(ops) == 0 || len(r.Warnings) != 0 {
		t.Fatalf("labelled pod: allowed %v, %d patch ops, warnings %q", r.Allowed, len(ops), r.Warnings)
	}
	var volume bool
	for _, op := range ops {
		if !strings.HasPrefix(op.Path, "/spec/") {
			t.Errorf("patch touches %s", op.Path)
		}
		volume = volume || (op.Op == "add" && op.Path == "/spec/volumes")
	}
	if !volume {
		t.Errorf("no volume in the patch %s", r.Patch)
	}

	// Fields of a newer Kubernetes than this client-go knows survive: the
	// patch only adds.
	future := bytes.Replace(reviewOf(t, testPod()), []byte(`"spec":{`), []byte(`"spec":{"futureField":{"x":1},`), 1)
	if !bytes.Contains(future, []byte("futureField")) {
		t.Fatal("the review has no unknown field")
	}
	futureOps := patchOps(t, admitRaw(t, srv, future))
	if len(futureOps) != len(ops) {
		t.Errorf("%d patch ops for the pod with an unknown field, %d without", len(futureOps), len(ops))
	}
	for _, op := range futureOps {
		if op.Op != "add" {
			t.Errorf("patch op %s %s", op.Op, op.Path)
		}
	}

	r = admit(t, srv, testPod(func(p *corev1.Pod) { p.Labels = nil }))
	if !r.Allowed || len(r.Patch) != 0 || r.PatchType != nil {
		t.Fatalf("unlabelled pod: %+v", r)
	}

	// Warnings travel in the response.
	r = admit(t, srv, testPod(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "nobody" }))
	if !r.Allowed || len(patchOps(t, r)) == 0 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], `"nobody" not found`) {
		t.Fatalf("missing service account: allowed %v, warnings %q", r.Allowed, r.Warnings)
	}

	// Refused with the reason.
	r = admit(t, srv, testPod(annotate(ExpirationAnnotation, "60")))
	if r.Allowed || r.Result == nil || r.Result.Code != http.StatusBadRequest || !strings.Contains(r.Result.Message, ExpirationAnnotation) || len(r.Patch) != 0 {
		t.Fatalf("invalid expiration: %+v", r)
	}
}

func TestHandlerServiceAccountReads(t *testing.T) {
	// A cache that lags: the live reader has the account.
	cache, live := newAccounts(), newAccounts(annotatedSA)
	srv := testHandler(t, HandlerConfig{ServiceAccounts: cache, Live: live})
	if r := admit(t, srv, testPod()); !r.Allowed || len(r.Warnings) != 0 || !strings.Contains(string(r.Patch), testClientID) {
		t.Fatalf("live fallback: %+v", r)
	}
	if cache.reads != 1 || live.reads != 1 {
		t.Fatalf("reads: cache %d live %d", cache.reads, live.reads)
	}
	// Not being able to read is not "missing": the pod is refused rather
	// than started without its identity.
	srv = testHandler(t, HandlerConfig{ServiceAccounts: &accounts{err: errors.New("apiserver unreachable")}})
	if r := admit(t, srv, testPod()); r.Allowed || r.Result.Code != http.StatusInternalServerError || !strings.Contains(r.Result.Message, "ns/app") {
		t.Fatalf("read error: %+v", r)
	}
	// Unlabelled pods cost no read.
	a := newAccounts()
	srv = testHandler(t, HandlerConfig{ServiceAccounts: a})
	admit(t, srv, testPod(func(p *corev1.Pod) { p.Labels = nil }))
	if a.reads != 0 {
		t.Fatalf("%d reads for an unlabelled pod", a.reads)
	}
}

func TestHandlerOnlyPodCreates(t *testing.T) {
	srv := testHandler(t, HandlerConfig{})
	for name, edit := range map[string]func(*admissionv1.AdmissionRequest){
		"update":      func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update },
		"subresource": func(r *admissionv1.AdmissionRequest) { r.SubResource = "ephemeralcontainers" },
		"deployment": func(r *admissionv1.AdmissionRequest) {
			r.Resource = metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
		},
	} {
		var review admissionv1.AdmissionReview
		json.Unmarshal(reviewOf(t, testPod()), &review)
		edit(review.Request)
		body, _ := json.Marshal(review)
		code, out := post(t, srv, "application/json", body)
		if code != http.StatusOK || !strings.Contains(out, `"allowed":true`) || strings.Contains(out, `"patch"`) {
			t.Errorf("%s: %d %s", name, code, out)
		}
	}
}

func TestHandlerBadRequests(t *testing.T) {
	srv := testHandler(t, HandlerConfig{})
	good := reviewOf(t, testPod())
	v1beta1 := bytes.Replace(good, []byte(`admission.k8s.io/v1"`), []byte(`admission.k8s.io/v1beta1"`), 1)
	for name, c := range map[string]struct {
		contentType string
		body        []byte
		code        int
		mention     string
	}{
		"yaml":            {"application/yaml", good, http.StatusBadRequest, "application/json"},
		"no content type": {"", good, http.StatusBadRequest, "application/json"},
		"not json":        {"application/json", []byte("{"), http.StatusBadRequest, "not an AdmissionReview"},
		"v1beta1":         {"application/json", v1beta1, http.StatusBadRequest, "admissionReviewVersions"},
		"another kind":    {"application/json", []byte(`{"apiVersion":"v1","kind":"Pod"}`), http.StatusBadRequest, `kind "Pod"`},
		"no request":      {"application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), http.StatusBadRequest, "no request"},
		"too large":       {"application/json", bytes.Repeat([]byte(" "), MaxReviewBytes+1), http.StatusRequestEntityTooLarge, "larger than"},
	} {
		code, body := post(t, srv, c.contentType, c.body)
		if code != c.code || !strings.Contains(body, c.mention) {
			t.Errorf("%s: %d %q, want %d mentioning %q", name, code, body, c.code, c.mention)
		}
	}
	// charset parameters are fine.
	if code, body := post(t, srv, "application/json; charset=utf-8", good); code != http.StatusOK {
		t.Errorf("charset: %d %s", code, body)
	}
	resp, err := http.Get(srv.URL + "/mutate")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /mutate: %d", resp.StatusCode)
	}
}

func TestHealthz(t *testing.T) {
	var ready atomic.Bool
	srv := testHandler(t, HandlerConfig{Ready: func() error {
		if !ready.Load() {
			return errors.New("no serving certificate yet")
		}
		return nil
	}})
	get := func() (int, string) {
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, "no serving certificate") {
		t.Fatalf("not ready: %d %s", code, body)
	}
	ready.Store(true)
	if code, body := get(); code != http.StatusOK || body != "ok" {
		t.Fatalf("ready: %d %s", code, body)
	}
}

func TestNewHandlerChecksConfig(t *testing.T) {
	for _, host := range []string{"", "http://login.example.com/", "login.example.com", "https://", "https://u:p@login.example.com/", "https://login.example.com/?x=1"} {
		if _, err := NewHandler(HandlerConfig{Config: Config{AuthorityHost: host}, ServiceAccounts: newAccounts()}); err == nil {
			t.Errorf("authority host %q accepted", host)
		}
	}
	if _, err := NewHandler(HandlerConfig{Config: testConfig}); err == nil {
		t.Error("no service account reader accepted")
	}
}
