package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is secret-sync.x-k8s.io/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: "secret-sync.x-k8s.io", Version: "v1alpha1"}

// Kind is the SecretSync kind, as owner references name it.
const Kind = "SecretSync"

// SecretSync asks for one Kubernetes Secret, named as the SecretSync and in
// its namespace, filled with files that the provider of a
// SecretProviderClass returns for a service account's identity.
//
// +kubebuilder:object:root=true
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
type SecretSync struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SecretSyncSpec   `json:"spec,omitempty"`
	Status SecretSyncStatus `json:"status,omitempty"`
}

// SecretSyncList is a list of SecretSyncs.
//
// +kubebuilder:object:root=true
type SecretSyncList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SecretSync `json:"items"`
}

// SecretSyncSpec is what to sync, from where and as whom.
type SecretSyncSpec struct {
	// secretSyncControllerName names the controller that should reconcile
	// this object; empty means any. Coffer's controller reconciles those
	// whose name is empty or equal to its own.
	// +optional
	// +kubebuilder:default:=""
	SecretSyncControllerName string `json:"secretSyncControllerName"`

	// secretProviderClassName names the SecretProviderClass, in this
	// namespace, whose provider and parameters fetch the data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$
	// +kubebuilder:validation:Required
	SecretProviderClassName string `json:"secretProviderClassName"`

	// serviceAccountName names the service account, in this namespace, whose
	// token (for the audiences the controller is configured with) the
	// provider uses to prove the identity that reads the data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$
	// +kubebuilder:validation:Required
	ServiceAccountName string `json:"serviceAccountName"`

	// secretObject describes the Secret to write.
	// +kubebuilder:validation:Required
	SecretObject SecretObject `json:"secretObject"`

	// forceSynchronization, when its value changes, makes the controller
	// fetch the data again and rewrite the Secret at once, whatever the
	// poll interval. Its value means nothing else.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=^[A-Za-z0-9]([-A-Za-z0-9]+([-._a-zA-Z0-9]?[A-Za-z0-9])*)?$
	// +optional
	ForceSynchronization string `json:"forceSynchronization,omitempty"`
}

// SecretObject is the Secret's shape.
type SecretObject struct {
	// type is the Secret's type, such as Opaque or kubernetes.io/tls. The
	// cluster's admission policies decide which types the controller may
	// write.
	// +kubebuilder:default:=Opaque
	// +kubebuilder:validation:Pattern:=^[^\s]+$
	// +kubebuilder:validation:Optional
	Type string `json:"type"`

	// data maps files of the provider's answer to keys of the Secret.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:Required
	// +listType=map
	// +listMapKey=targetKey
	Data []SecretObjectData `json:"data"`

	// labels are added to the Secret's, beside the controller's own
	// secrets-store.sync.x-k8s.io/secretsync=<name>; the prefix
	// secrets-store.sync.x-k8s.io is the controller's.
	// +kubebuilder:validation:XValidation:message="Label keys must not exceed 317 characters (254 for prefix+separator, 63 for name), label values must not exceed 63 characters.",rule="(self.all(x, x.size() <= 317 && self[x].size() <= 63) == true)"
	// +kubebuilder:validation:XValidation:message="Labels should not contain secrets-store.sync.x-k8s.io. This key is reserved for the controller.",rule="(self.all(x, x.startsWith('secrets-store.sync.x-k8s.io') == false))"
	// +optional
	Labels map[string]string `json:"labels,omitempty"`

	// annotations are added to the Secret's; the prefix
	// secrets-store.sync.x-k8s.io is the controller's.
	// +kubebuilder:validation:XValidation:message="Annotations keys must not exceed 317 characters (254 for prefix+separator, 63 for name), annotation values must not exceed 256 kB.",rule="(self.all(x, x.size() < 317 && self[x].size() <= 262144) == true)"
	// +kubebuilder:validation:XValidation:message="Annotations should not contain secrets-store.sync.x-k8s.io. This key is reserved for the controller.",rule="(self.all(x, x.startsWith('secrets-store.sync.x-k8s.io') == false))"
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// SecretObjectData maps one file to one key.
type SecretObjectData struct {
	// sourcePath is the path of a file in the provider's Mount answer: an
	// object's file name (its alias, if it has one), or {name}/{index} for
	// one of its versions.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=^[A-Za-z0-9.]([-A-Za-z0-9]+([-._a-zA-Z0-9]?[A-Za-z0-9])*)?(\/([0-9]+))*$
	// +kubebuilder:validation:Required
	SourcePath string `json:"sourcePath"`

	// targetKey is the key under .data of the Secret; for a
	// kubernetes.io/tls Secret, tls.crt or tls.key, which are split out
	// of a PEM bundle or PKCS#12.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=^[A-Za-z0-9.]([-A-Za-z0-9]+([-._a-zA-Z0-9]?[A-Za-z0-9])*)?(\/([0-9]+))*$
	// +kubebuilder:validation:Required
	TargetKey string `json:"targetKey"`
}

// SecretSyncStatus is what the controller last did.
type SecretSyncStatus struct {
	// syncHash identifies the synced state: the Secret's data, type,
	// labels and annotations, the SecretProviderClass's and the
	// SecretSync's UID and generation, and forceSynchronization. Coffer
	// keys it (HMAC-SHA256) with the Secret's UID, which only readers of
	// the Secret know, so the hash tells nothing about the values to
	// those who may read SecretSyncs alone. It changes exactly when the
	// synced state does.
	// +optional
	SyncHash string `json:"syncHash,omitempty"`

	// lastSuccessfulSyncTime is when the controller last fetched the data
	// and wrote a changed Secret.
	// +optional
	LastSuccessfulSyncTime *metav1.Time `json:"lastSuccessfulSyncTime,omitempty"`

	// conditions are Create (whether the Secret could be created) and
	// Update (whether it holds the provider's current data), with the
	// upstream reasons: CreateSucceeded, NoValueChange,
	// ValueChangeOrForceUpdateDetected, ProviderError, ControllerSPCError,
	// UserInputValidationFailed, ValidatingAdmissionPolicyCheckFailed,
	// InvalidClusterSecretLabelError, InvalidClusterSecretAnnotationError,
	// ControllerInternalError and UnknownError.
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// AddToScheme registers the types with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &SecretSync{}, &SecretSyncList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
