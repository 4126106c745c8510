package webhook

// The label, annotations and values below are the upstream
// azure-workload-identity webhook's (github.com/Azure/azure-workload-identity),
// so manifests written for it work with Coffer unchanged.
const (
	// UseLabel opts a pod in: only pods with UseLabel = "true" are mutated.
	UseLabel = "azure.workload.identity/use"

	// ClientIDAnnotation on a ServiceAccount names the identity (the
	// application or managed identity's client id) that its pods act as.
	ClientIDAnnotation = "azure.workload.identity/client-id"

	// TenantIDAnnotation on a ServiceAccount overrides the webhook's
	// default tenant.
	TenantIDAnnotation = "azure.workload.identity/tenant-id"

	// ExpirationAnnotation sets the projected token's lifetime in seconds,
	// on a ServiceAccount or on a pod; the pod's wins.
	ExpirationAnnotation = "azure.workload.identity/service-account-token-expiration"

	// SkipContainersAnnotation on a pod lists containers, separated by
	// semicolons, that must not be injected (sidecars that have no use for
	// the identity).
	SkipContainersAnnotation = "azure.workload.identity/skip-containers"
)

// The environment variables that azidentity's WorkloadIdentityCredential
// and the other Azure SDKs read.
const (
	// EnvClientID names the identity to sign in as.
	EnvClientID = "AZURE_CLIENT_ID"
	// EnvTenantID names the tenant of that identity.
	EnvTenantID = "AZURE_TENANT_ID"
	// EnvTokenFile is the path of the service-account token to exchange.
	EnvTokenFile = "AZURE_FEDERATED_TOKEN_FILE"
	// EnvAuthorityHost is the authority to exchange it at: Coffer's,
	// instead of https://login.microsoftonline.com/.
	EnvAuthorityHost = "AZURE_AUTHORITY_HOST"
)

// The projected token: its volume, where it is mounted and what it is for.
const (
	// TokenVolume is the name of the projected volume, and of its mount.
	TokenVolume = "azure-identity-token"

	// TokenDir is where the volume is mounted in every injected container.
	TokenDir = "/var/run/secrets/azure/tokens"

	// TokenPath is the token file's path inside the volume.
	TokenPath = "azure-identity-token"

	// TokenFile is the value of AZURE_FEDERATED_TOKEN_FILE: TokenPath
	// under TokenDir.
	TokenFile = TokenDir + "/" + TokenPath

	// TokenAudience is the audience that token exchange with Entra ID (and
	// Coffer's authority, whose federated credentials default to it)
	// expects.
	TokenAudience = "api://AzureADTokenExchange"
)

// Token lifetimes, in seconds, as upstream: at least an hour, because the
// kubelet refreshes a projected token at 80% of its life and shorter tokens
// only add TokenRequest load; at most a day, to bound what a leaked token
// is worth.
const (
	// DefaultExpiration applies when no annotation sets a lifetime.
	DefaultExpiration int64 = 3600
	// MinExpiration is the shortest lifetime an annotation may set.
	MinExpiration int64 = 3600
	// MaxExpiration is the longest lifetime an annotation may set.
	MaxExpiration int64 = 86400
)
