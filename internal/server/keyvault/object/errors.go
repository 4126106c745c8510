package object

import (
	"errors"
	"fmt"
)

// ErrNotFound means the object, or the requested version, does not exist.
var ErrNotFound = errors.New("object not found")

// ErrDeleted means the name belongs to a soft-deleted object, which can only
// be recovered or purged.
var ErrDeleted = errors.New("object is deleted but recoverable")

// ErrExists means an import found the name already in use.
var ErrExists = errors.New("object already exists")

// ErrBusy means an object kept changing under concurrent writers.
var ErrBusy = errors.New("object is being changed concurrently; retry")

// ErrInvalid means a request parameter is wrong; the message says which.
var ErrInvalid = errors.New("invalid parameter")

// ErrForbidden means the operation is refused for the object's state (it is
// disabled, expired, or purge-protected), whoever asks.
var ErrForbidden = errors.New("operation not allowed")

// Error is a domain error that carries a message safe to show to clients,
// and optionally an Azure inner error code. It matches its Kind with
// errors.Is. Messages name objects but never hold values.
type Error struct {
	Kind  error
	Inner string
	// Code, when set, replaces the error code the kind's sentinel maps to
	// (ContactsNotFound rather than the kind's CertificateNotFound).
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the sentinel the error is a kind of.
func (e *Error) Unwrap() error { return e.Kind }

// Invalidf returns an ErrInvalid error with a formatted message.
func Invalidf(format string, args ...any) error {
	return &Error{Kind: ErrInvalid, Message: fmt.Sprintf(format, args...)}
}

// Errorf returns an error of kind with an inner code and a formatted message.
func Errorf(kind error, inner, format string, args ...any) error {
	return &Error{Kind: kind, Inner: inner, Message: fmt.Sprintf(format, args...)}
}
