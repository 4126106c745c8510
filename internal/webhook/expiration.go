package webhook

import (
	"errors"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// ErrInvalidAnnotation is returned (wrapped) by Mutate when an annotation
// that shapes the pod has a value it cannot use. The webhook refuses such a
// pod instead of guessing: a token lifetime silently replaced by the default
// is a surprise found only in production.
var ErrInvalidAnnotation = errors.New("invalid annotation")

// tokenExpiration returns the projected token's lifetime: the pod's
// annotation if set, else the service account's, else the default. An
// invalid value in the annotation that wins is an error naming the object,
// the annotation, the value and the valid range; one that loses is ignored,
// as upstream does.
func tokenExpiration(pod *corev1.Pod, sa *corev1.ServiceAccount) (int64, error) {
	if v, ok := pod.Annotations[ExpirationAnnotation]; ok {
		return parseExpiration("pod", v)
	}
	if sa != nil {
		if v, ok := sa.Annotations[ExpirationAnnotation]; ok {
			return parseExpiration(fmt.Sprintf("service account %q", sa.Name), v)
		}
	}
	return DefaultExpiration, nil
}

func parseExpiration(where, v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < MinExpiration || n > MaxExpiration {
		return 0, fmt.Errorf("%w: %s annotation %s=%q must be a whole number of seconds from %d to %d",
			ErrInvalidAnnotation, where, ExpirationAnnotation, v, MinExpiration, MaxExpiration)
	}
	return n, nil
}
