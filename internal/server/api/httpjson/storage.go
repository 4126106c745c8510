package httpjson

import (
	"errors"
	"net/http"
	"syscall"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// StorageFailure is how an API answers a store that could not take a
// request: the status, the Azure error code, the message, and whether the
// client should retry after a second.
type StorageFailure struct {
	Status     int
	Code       string
	Message    string
	RetryAfter bool
}

// Storage classifies err if it is the store's: unavailable (503, retry),
// out of space (507: reads go on working; retry once space is freed), or a
// batch over the engine's limit (400). ok is false for other errors.
func Storage(err error) (StorageFailure, bool) {
	var tl *physical.TooLargeError
	switch {
	case errors.Is(err, physical.ErrUnavailable):
		return StorageFailure{http.StatusServiceUnavailable, "ServiceUnavailable", "The store is unavailable; nothing was changed unless a retry shows it was. Retry, and another replica may answer.", true}, true
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return StorageFailure{http.StatusInsufficientStorage, "InsufficientStorage", "The server's store is out of disk space, so nothing was written; reads still work. Retry once an operator has freed space.", true}, true
	case errors.As(err, &tl):
		return StorageFailure{http.StatusBadRequest, "BadParameter", tl.Error() + "; make the change smaller (fewer or smaller values).", false}, true
	}
	return StorageFailure{}, false
}
