// Package podidentity holds the aadpodidentity.k8s.io/v1 API that AAD Pod
// Identity defined (AzureIdentity, AzureIdentityBinding,
// AzurePodIdentityException and AzureAssignedIdentity), so its manifests
// keep working, and the pure rules that decide which identities a pod holds.
//
// +groupName=aadpodidentity.k8s.io
// +versionName=v1
// +kubebuilder:object:generate=true
package podidentity

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is aadpodidentity.k8s.io/v1.
var GroupVersion = schema.GroupVersion{Group: "aadpodidentity.k8s.io", Version: "v1"}

// BindingLabel is the pod label an AzureIdentityBinding's selector matches.
const BindingLabel = "aadpodidbinding"

// ClusterWideAnnotation on an AzureIdentityBinding, set to "true", makes it
// apply to pods of every namespace. Node agents honour it only when started
// with --allow-cluster-wide-bindings: both the binding's owner and the
// cluster's operator must opt in.
const ClusterWideAnnotation = "coffer.dev/cluster-wide"

// IdentityType is the kind of identity an AzureIdentity describes.
type IdentityType int

// The identity types, numbered as in AAD Pod Identity.
const (
	UserAssignedMSI             IdentityType = 0
	ServicePrincipal            IdentityType = 1
	ServicePrincipalCertificate IdentityType = 2
)

func (t IdentityType) String() string {
	switch t {
	case UserAssignedMSI:
		return "user-assigned identity"
	case ServicePrincipal:
		return "service principal"
	case ServicePrincipalCertificate:
		return "service principal with certificate"
	}
	return "unknown identity type"
}

// AzureIdentity describes an identity pods may be given.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept compatible with AAD Pod Identity's manifests"
// +kubebuilder:printcolumn:name="Type",type=integer,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="ClientID",type=string,JSONPath=`.spec.clientID`
// +kubebuilder:printcolumn:name="ResourceID",type=string,JSONPath=`.spec.resourceID`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// Spec keeps fields the schema does not name, because AAD Pod
	// Identity's manifests often spell them ResourceID or ClientID and its
	// readers matched field names without regard to case. Coffer reads
	// them the same way.
	// +kubebuilder:pruning:PreserveUnknownFields
	Spec   AzureIdentitySpec   `json:"spec,omitempty"`
	Status AzureIdentityStatus `json:"status,omitempty"`
}

// AzureIdentitySpec is an AzureIdentity's identity.
type AzureIdentitySpec struct {
	// Type is 0 (user-assigned identity), 1 (service principal) or 2
	// (service principal with certificate).
	// +optional
	Type IdentityType `json:"type,omitempty"`
	// ResourceID is a user-assigned identity's resource id.
	// +optional
	ResourceID string `json:"resourceID,omitempty"`
	// ClientID is the identity's client (application) id.
	// +optional
	ClientID string `json:"clientID,omitempty"`
	// ClientPassword names the Secret that holds a service principal's
	// clientSecret (type 1), or its certificate and password (type 2).
	// +optional
	ClientPassword corev1.SecretReference `json:"clientPassword,omitempty"`
	// TenantID is a service principal's tenant.
	// +optional
	TenantID string `json:"tenantID,omitempty"`
	// AuxiliaryTenantIDs are accepted and not used.
	// +optional
	AuxiliaryTenantIDs []string `json:"auxiliaryTenantIDs,omitempty"`
	// ADResourceID is accepted and not used.
	// +optional
	ADResourceID string `json:"adResourceID,omitempty"`
	// ADEndpoint is accepted and not used: tokens come from the node
	// agent's authority.
	// +optional
	ADEndpoint string `json:"adEndpoint,omitempty"`
	// Replicas is accepted and not used.
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`
}

// AzureIdentityStatus is accepted for compatibility.
type AzureIdentityStatus struct {
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`
}

// AzureIdentityList is a list of AzureIdentity.
//
// +kubebuilder:object:root=true
type AzureIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentity `json:"items"`
}

// AzureIdentityBinding gives an AzureIdentity to the pods whose
// aadpodidbinding label equals its selector.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept compatible with AAD Pod Identity's manifests"
// +kubebuilder:printcolumn:name="Identity",type=string,JSONPath=`.spec.azureIdentity`
// +kubebuilder:printcolumn:name="Selector",type=string,JSONPath=`.spec.selector`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureIdentityBinding struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// +kubebuilder:pruning:PreserveUnknownFields
	Spec   AzureIdentityBindingSpec   `json:"spec,omitempty"`
	Status AzureIdentityBindingStatus `json:"status,omitempty"`
}

// AzureIdentityBindingSpec names the identity and the label value.
type AzureIdentityBindingSpec struct {
	// AzureIdentity is the name of an AzureIdentity in the binding's
	// namespace.
	AzureIdentity string `json:"azureIdentity,omitempty"`
	// Selector is the value of the pods' aadpodidbinding label.
	Selector string `json:"selector,omitempty"`
	// Weight orders the identities of a pod that has several: the highest
	// weight is the default.
	// +optional
	Weight int `json:"weight,omitempty"`
}

// AzureIdentityBindingStatus is accepted for compatibility.
type AzureIdentityBindingStatus struct {
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`
}

// AzureIdentityBindingList is a list of AzureIdentityBinding.
//
// +kubebuilder:object:root=true
type AzureIdentityBindingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentityBinding `json:"items"`
}

// AzurePodIdentityException marks pods, by labels, that are served as the
// node itself: they get the node's identities (its system-assigned identity
// and the user-assigned identities the node agent was given), as pods that
// reach the real IMDS do under AAD Pod Identity. It applies to pods in its
// own namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept compatible with AAD Pod Identity's manifests"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzurePodIdentityException struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AzurePodIdentityExceptionSpec `json:"spec,omitempty"`
}

// AzurePodIdentityExceptionSpec holds the labels a pod must all carry.
type AzurePodIdentityExceptionSpec struct {
	PodLabels map[string]string `json:"podLabels,omitempty"`
}

// AzurePodIdentityExceptionList is a list of AzurePodIdentityException.
//
// +kubebuilder:object:root=true
type AzurePodIdentityExceptionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzurePodIdentityException `json:"items"`
}

// AzureAssignedIdentity records that a pod holds an identity. Node agents
// write one per pod and identity on their node, named
// {pod}-{namespace}-{identity}, owned by the pod, so `kubectl get
// azureassignedidentities` shows who holds what. Its spec has AAD Pod
// Identity's shape, so the jsonpath queries written for it keep working
// (such as {.spec.azureIdentityRef.metadata.name}).
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept compatible with AAD Pod Identity's manifests"
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.pod`
// +kubebuilder:printcolumn:name="Identity",type=string,JSONPath=`.spec.azureIdentityRef.metadata.name`
// +kubebuilder:printcolumn:name="ClientID",type=string,JSONPath=`.spec.azureIdentityRef.spec.clientID`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodename`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureAssignedIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AzureAssignedIdentitySpec   `json:"spec,omitempty"`
	Status            AzureAssignedIdentityStatus `json:"status,omitempty"`
}

// AzureAssignedIdentitySpec says which pod holds which identity, and why.
type AzureAssignedIdentitySpec struct {
	// AzureIdentityRef is the identity the pod holds: its name, namespace
	// and spec (a Secret's name, never its content).
	// +kubebuilder:validation:XEmbeddedResource
	// +optional
	AzureIdentityRef *AzureIdentity `json:"azureIdentityRef,omitempty"`
	// AzureBindingRef is the binding that gave it: its name, namespace
	// and spec.
	// +kubebuilder:validation:XEmbeddedResource
	// +optional
	AzureBindingRef *AzureIdentityBinding `json:"azureBindingRef,omitempty"`
	Pod             string                `json:"pod"`
	PodNamespace    string                `json:"podNamespace"`
	NodeName        string                `json:"nodename"`
}

// AzureAssignedIdentityStatus is "Assigned" once the node agent serves the
// identity to the pod.
type AzureAssignedIdentityStatus struct {
	// +optional
	Status string `json:"status,omitempty"`
}

// AzureAssignedIdentityList is a list of AzureAssignedIdentity.
//
// +kubebuilder:object:root=true
type AzureAssignedIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureAssignedIdentity `json:"items"`
}

// AddToScheme registers the types with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&AzureIdentity{}, &AzureIdentityList{},
		&AzureIdentityBinding{}, &AzureIdentityBindingList{},
		&AzurePodIdentityException{}, &AzurePodIdentityExceptionList{},
		&AzureAssignedIdentity{}, &AzureAssignedIdentityList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
