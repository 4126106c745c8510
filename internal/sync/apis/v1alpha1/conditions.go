package v1alpha1

// The words of the API besides its fields: the condition types and
// reasons (upstream's), the label on every synced Secret, and Coffer's
// deletion-policy annotation.
const (
	// ConditionCreate says whether the Secret could be created.
	ConditionCreate = "Create"
	// ConditionUpdate says whether the Secret holds the provider's current
	// data. A failed refresh sets it False and leaves the Secret as it
	// was.
	ConditionUpdate = "Update"

	// ReasonCreateSucceeded: the Secret was created (Create True).
	ReasonCreateSucceeded = "CreateSucceeded"
	// ReasonNoValueChange: the data was fetched again and had not changed
	// (Update True).
	ReasonNoValueChange = "NoValueChange"
	// ReasonValueChangeOrForceUpdateDetected: the data, the SecretSync,
	// its class or forceSynchronization changed, and the Secret was
	// rewritten (Update True).
	ReasonValueChangeOrForceUpdateDetected = "ValueChangeOrForceUpdateDetected"

	// ReasonProviderError: the provider could not be reached, or answered
	// Mount with an error code (named in the message): a refused
	// identity, a missing object, an unreachable vault.
	ReasonProviderError = "ProviderError"
	// ReasonControllerSPCError: the SecretProviderClass is missing or
	// names no usable provider.
	ReasonControllerSPCError = "ControllerSPCError"
	// ReasonUserInputValidationFailed: the SecretSync cannot be honoured
	// as written: a sourcePath that names no file, data that does not fit
	// the Secret's type, a Secret of that name that the controller does
	// not manage, a service account that does not exist.
	ReasonUserInputValidationFailed = "UserInputValidationFailed"
	// ReasonValidatingAdmissionPolicyCheckFailed: the apiserver's
	// admission policies refused the controller's write, such as a Secret
	// type the cluster does not allow it.
	ReasonValidatingAdmissionPolicyCheckFailed = "ValidatingAdmissionPolicyCheckFailed"
	// ReasonInvalidClusterSecretLabelError: secretObject.labels uses the
	// controller's prefix.
	ReasonInvalidClusterSecretLabelError = "InvalidClusterSecretLabelError"
	// ReasonInvalidClusterSecretAnnotationError: secretObject.annotations
	// uses the controller's prefix.
	ReasonInvalidClusterSecretAnnotationError = "InvalidClusterSecretAnnotationError"
	// ReasonControllerInternalError: the controller could not do its part,
	// such as get a service-account token.
	ReasonControllerInternalError = "ControllerInternalError"
	// ReasonUnknownError: the apiserver refused the Secret's write for a
	// reason the controller does not know.
	ReasonUnknownError = "UnknownError"

	// ReservedPrefix is the label and annotation prefix of the controller.
	ReservedPrefix = "secrets-store.sync.x-k8s.io"
	// SecretLabel marks a Secret written for a SecretSync; its value is the
	// SecretSync's (and the Secret's) name. The controller never writes a
	// Secret that does not carry it, except to create it.
	SecretLabel = ReservedPrefix + "/secretsync"

	// DeletionPolicyAnnotation, on a SecretSync, set to DeletionPolicyRetain,
	// keeps its Secret when the SecretSync is deleted (as External Secrets
	// Operator's deletionPolicy: Retain): the controller releases it (it
	// removes its owner reference and SecretLabel) instead of letting the
	// garbage collector delete it. It is Coffer's: the upstream controller
	// ignores it.
	DeletionPolicyAnnotation = "coffer.dev/deletion-policy"
	// DeletionPolicyRetain keeps the Secret.
	DeletionPolicyRetain = "Retain"
	// DeletionPolicyDelete, the default, deletes the Secret with the
	// SecretSync.
	DeletionPolicyDelete = "Delete"
	// RetainFinalizer holds a SecretSync with DeletionPolicyRetain until the
	// controller has released its Secret.
	RetainFinalizer = "coffer.dev/retain-secret"
)
