package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// ServiceAccountReader reads ServiceAccounts. A controller-runtime cache or
// client satisfies it.
type ServiceAccountReader interface {
	Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error
}

// HandlerConfig configures a Handler.
type HandlerConfig struct {
	Config

	// ServiceAccounts is where pods' service accounts are read, usually a
	// watch cache, so that admission does not wait on the apiserver.
	ServiceAccounts ServiceAccountReader

	// Live, if set, is asked when ServiceAccounts has no such service
	// account: a cache lags behind the apiserver, and a service account
	// created just before its pod (one kubectl apply) must not be taken as
	// missing, or the pod would start without AZURE_CLIENT_ID.
	Live ServiceAccountReader

	// Ready reports whether the webhook can serve; GET /healthz answers
	// 503 with its error otherwise. Nil means always ready.
	Ready func() error

	// Metrics count admissions; nil counts into a private registry.
	Metrics *Metrics

	// Log receives one line per admission. Nil discards.
	Log *slog.Logger
}

// Handler serves POST /mutate (an AdmissionReview in, the same with a
// JSONPatch out) and GET /healthz.
type Handler struct {
	cfg HandlerConfig
	mux *http.ServeMux
}

// NewHandler checks cfg and returns the handler.
func NewHandler(cfg HandlerConfig) (*Handler, error) {
	if cfg.ServiceAccounts == nil {
		return nil, errors.New("webhook: no service account reader")
	}
	if err := ValidateAuthorityHost(cfg.AuthorityHost); err != nil {
		return nil, err
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST /mutate", h.mutate)
	h.mux.HandleFunc("GET /healthz", h.healthz)
	return h, nil
}

// ValidateAuthorityHost checks an AZURE_AUTHORITY_HOST value: an absolute
// https URL of a host, as the Azure SDKs require (they refuse to send
// credentials over plain HTTP).
func ValidateAuthorityHost(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("authority host %q is not an https URL such as https://login.coffer.example.com/", s)
	}
	return nil
}

// ServeHTTP routes to /mutate and /healthz.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	if h.cfg.Ready != nil {
		if err := h.cfg.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	w.Write([]byte("ok"))
}

func (h *Handler) mutate(w http.ResponseWriter, r *http.Request) {
	review, re := readReview(w, r)
	if re != nil {
		h.cfg.Metrics.admissions.WithLabelValues(outcomeBadRequest).Inc()
		h.cfg.Log.Warn("bad admission request", "remote", r.RemoteAddr, "status", re.status, "error", re.msg)
		http.Error(w, re.msg, re.status)
		return
	}
	req := review.Request
	resp, outcome, log := h.admit(r.Context(), req)
	h.cfg.Metrics.admissions.WithLabelValues(outcome).Inc()
	h.cfg.Metrics.warnings.Add(float64(len(resp.Warnings)))
	if err := resp.Complete(admission.Request{AdmissionRequest: *req}); err != nil {
		resp = admission.Errored(http.StatusInternalServerError, err)
		resp.UID = req.UID
	}
	// Identifiers and warnings only: warnings name containers and
	// variables, never the values of a pod's environment.
	log = log.With("uid", req.UID, "namespace", req.Namespace, "outcome", outcome)
	if len(resp.Warnings) > 0 {
		log = log.With("warnings", resp.Warnings)
	}
	if resp.Result != nil && resp.Result.Message != "" {
		log = log.With("reason", resp.Result.Message)
	}
	log.Info("admission")
	if err := writeReview(w, &resp.AdmissionResponse); err != nil {
		h.cfg.Log.Warn("writing the admission response", "uid", req.UID, "error", err)
	}
}

// admit decides one request. It returns the response, its outcome label,
// and a logger carrying what the request was about.
func (h *Handler) admit(ctx context.Context, req *admissionv1.AdmissionRequest) (admission.Response, string, *slog.Logger) {
	log := h.cfg.Log
	// Anything but the creation of a pod is admitted as is: a webhook
	// configuration matching more than that is a mistake, but refusing
	// every Deployment because of it would be worse.
	if req.Resource != (metav1.GroupVersionResource{Version: "v1", Resource: "pods"}) || req.SubResource != "" || req.Operation != admissionv1.Create {
		return admission.Allowed(""), outcomeUnchanged, log.With("resource", req.Resource.String(), "operation", req.Operation)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding the pod: %w", err)), outcomeError, log
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	log = log.With("pod", name)
	if !Enabled(&pod) {
		return admission.Allowed(""), outcomeUnchanged, log
	}
	saName := ServiceAccountName(&pod)
	log = log.With("serviceAccount", saName)
	sa, err := h.serviceAccount(ctx, req.Namespace, saName)
	if apierrors.IsNotFound(err) {
		sa, err = nil, nil // Mutate injects what it can, and warns
	}
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("reading service account %s/%s: %w", req.Namespace, saName, err)), outcomeError, log
	}
	mutated, warnings, err := Mutate(&pod, sa, h.cfg.Config)
	if err != nil {
		resp := admission.Errored(http.StatusBadRequest, err)
		resp.Result.Reason = metav1.StatusReasonBadRequest
		return resp, outcomeRefused, log
	}
	before, err := json.Marshal(&pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), outcomeError, log
	}
	after, err := json.Marshal(mutated)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), outcomeError, log
	}
	// The patch is computed against the pod as decoded, not the raw
	// request: fields this client-go does not know would otherwise show up
	// as removals.
	resp := admission.PatchResponseFromRaw(before, after)
	resp.Warnings = warnings
	if len(resp.Patches) == 0 {
		return resp, outcomeUnchanged, log
	}
	return resp, outcomeMutated, log
}

// serviceAccount reads the named service account, from Live when
// ServiceAccounts does not have it. Only a NotFound error means the account
// is missing; the caller refuses the pod on any other, rather than
// injecting it as if the account were missing.
func (h *Handler) serviceAccount(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	sa := &corev1.ServiceAccount{}
	key := client.ObjectKey{Namespace: ns, Name: name}
	err := h.cfg.ServiceAccounts.Get(ctx, key, sa)
	if apierrors.IsNotFound(err) && h.cfg.Live != nil {
		err = h.cfg.Live.Get(ctx, key, sa)
	}
	if err != nil {
		return nil, err
	}
	return sa, nil
}
