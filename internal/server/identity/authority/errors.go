package authority

import (
	"errors"
	"fmt"
	"net/http"
)

// ErrNotFound means a tenant or principal does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists means a principal with the same id or resource id exists.
var ErrExists = errors.New("already exists")

// ErrInvalid means an input is malformed; the message says which.
var ErrInvalid = errors.New("invalid")

// ErrAmbiguous means a name matches more than one principal.
var ErrAmbiguous = errors.New("ambiguous")

// OAuthError is a token-endpoint failure in Entra ID's shape: an OAuth error
// code, an AADSTS number and a description. Descriptions name what was wrong
// and never contain a secret or a token.
type OAuthError struct {
	Status      int
	Code        string // invalid_request, invalid_client, ...
	AADSTS      int
	Description string
	// RetryAfter is set on throttling and outages (seconds).
	RetryAfter int
	// Detail is for the server's log only: what the caller must not be
	// told but the operator needs to see why it was refused.
	Detail string
}

func (e *OAuthError) Error() string {
	return fmt.Sprintf("%s: AADSTS%d: %s", e.Code, e.AADSTS, e.Description)
}

func oauthErr(status int, code string, aadsts int, format string, args ...any) *OAuthError {
	return &OAuthError{Status: status, Code: code, AADSTS: aadsts, Description: fmt.Sprintf(format, args...)}
}

func invalidRequest(aadsts int, format string, args ...any) *OAuthError {
	return oauthErr(http.StatusBadRequest, "invalid_request", aadsts, format, args...)
}

func invalidClient(aadsts int, format string, args ...any) *OAuthError {
	return oauthErr(http.StatusUnauthorized, "invalid_client", aadsts, format, args...)
}
