package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
)

// MaxReviewBytes caps an AdmissionReview body. A pod is at most about
// 1.5 MB in etcd and its JSON is larger than its protobuf, so 3 MiB fits any
// pod the apiserver can store while bounding what a stray client can make
// the webhook buffer.
const MaxReviewBytes = 3 << 20

// reviewGVK is the only AdmissionReview version the webhook speaks; its
// MutatingWebhookConfiguration must say admissionReviewVersions: [v1].
var reviewGVK = admissionv1.SchemeGroupVersion.WithKind("AdmissionReview")

// requestError is a request that is not an AdmissionReview the webhook can
// answer. It becomes an HTTP error status with a plain-text explanation,
// since there is no review to carry one.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

// readReview reads and checks the body of POST /mutate.
func readReview(w http.ResponseWriter, r *http.Request) (*admissionv1.AdmissionReview, *requestError) {
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return nil, &requestError{http.StatusBadRequest, fmt.Sprintf("Content-Type is %q; an AdmissionReview must be sent as application/json", ct)}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxReviewBytes))
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return nil, &requestError{http.StatusRequestEntityTooLarge, fmt.Sprintf("the AdmissionReview is larger than %d bytes", mbe.Limit)}
		}
		return nil, &requestError{http.StatusBadRequest, "reading the body: " + err.Error()}
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		return nil, &requestError{http.StatusBadRequest, "the body is not an AdmissionReview: " + err.Error()}
	}
	if gvk := review.GroupVersionKind(); gvk != reviewGVK {
		return nil, &requestError{http.StatusBadRequest, fmt.Sprintf("the body is apiVersion %q kind %q; want apiVersion %q kind %q (set admissionReviewVersions: [v1])",
			review.APIVersion, review.Kind, reviewGVK.GroupVersion().String(), reviewGVK.Kind)}
	}
	if review.Request == nil {
		return nil, &requestError{http.StatusBadRequest, "the AdmissionReview has no request"}
	}
	return &review, nil
}

// writeReview answers with resp, as a v1 AdmissionReview.
func writeReview(w http.ResponseWriter, resp *admissionv1.AdmissionResponse) error {
	out := admissionv1.AdmissionReview{Response: resp}
	out.SetGroupVersionKind(reviewGVK)
	b, err := json.Marshal(&out)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(b)
	return err
}
