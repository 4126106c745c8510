// Package v1alpha1 is the secret-sync.x-k8s.io/v1alpha1 API of the
// Kubernetes project's secrets-store-sync-controller: SecretSync, which
// asks for a Kubernetes Secret filled from a SecretProviderClass's provider
// with no pod involved. The types are Coffer's own, written to the same
// wire format (field names, validation, status) as upstream's, so
// manifests written for the upstream controller apply unchanged; the CRD
// in deploy/crds is generated from them by scripts/gen-crds.sh.
//
// +groupName=secret-sync.x-k8s.io
// +versionName=v1alpha1
// +kubebuilder:object:generate=true
package v1alpha1
