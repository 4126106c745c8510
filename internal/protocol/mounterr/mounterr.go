// Package mounterr is the error vocabulary of a mount, between a Secrets
// Store CSI driver and its provider. The upstream v1alpha1 protocol carries
// only a code (MountResponse.error.code); Coffer's provider adds the
// explanation in a gRPC trailer, which Coffer's driver shows in its events
// and errors and the upstream driver ignores.
package mounterr

// Trailer is the gRPC trailer that carries a failed mount's explanation.
const Trailer = "coffer-error"

// Code is a mount error's category.
type Code string

// The codes a provider reports. Coffer's provider classifies vault and
// authority failures into the first six; the driver reports its own
// failures as FailedToMount (upstream's name) and an unusable provider
// answer as GRPCProviderError.
const (
	NotFound          Code = "NotFound"
	Forbidden         Code = "Forbidden"
	Throttled         Code = "Throttled"
	Unreachable       Code = "Unreachable"
	InvalidParameter  Code = "InvalidParameter"
	Internal          Code = "Internal"
	FailedToMount     Code = "FailedToMount"
	GRPCProviderError Code = "GRPCProviderError"
	// Other stands for any code outside this list, so that a provider
	// cannot grow a metric's label set or the event reasons without bound.
	Other Code = "ProviderError"
)

// Known returns code if it is one of this package's codes, else Other.
func Known(code string) Code {
	switch c := Code(code); c {
	case NotFound, Forbidden, Throttled, Unreachable, InvalidParameter, Internal, FailedToMount, GRPCProviderError:
		return c
	}
	return Other
}
