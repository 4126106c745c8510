// Package webhook is Coffer's mutating admission webhook for Azure
// Workload Identity: pods labelled azure.workload.identity/use=true get the
// environment and the projected service-account token that the Azure SDKs'
// WorkloadIdentityCredential reads, so that workloads written for Microsoft
// Entra workload identity run unchanged against Coffer's authority.
//
// The package has three parts, each usable on its own:
//
//   - Mutate, a pure function from (pod, service account, Config) to the
//     patched pod and the admission warnings. All decisions live there, so
//     they are tested as map tables without a cluster.
//   - Handler, the HTTP side: AdmissionReview in, JSONPatch out.
//   - Rotator, which owns the webhook's serving certificate: it keeps it in
//     a Secret, renews it before it expires and publishes its CA in the
//     MutatingWebhookConfiguration, so no cert-manager is needed.
package webhook
