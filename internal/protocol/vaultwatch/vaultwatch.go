// Package vaultwatch is the wire vocabulary of Coffer's vault watch: one
// streaming request per node and identity that reports changes to many
// vault objects at once, where a held read (Prefer: wait) watches one.
// docs/vault-watch.md specifies it; the server (kvhttp) and the node's
// reader (kvclient) both use these names.
package vaultwatch

// Path is the watch's route, on the authority's host (the parent of the
// vaults' hosts, which is also the vault tokens' audience): one stream
// serves objects of any vault the server holds.
const Path = "/coffer/watch"

// ContentType is the answer's media type: one JSON Record per line.
const ContentType = "application/x-ndjson"

// Limits of one request; larger ones are refused with 400 (413 for the
// body), and the client splits its objects over several streams.
const (
	MaxObjects = 10000
	MaxBody    = 4 << 20
)

// Kinds of object, as in their collection's path.
const (
	Secrets      = "secrets"
	Keys         = "keys"
	Certificates = "certificates"
)

// Request is the body of a watch: the objects to watch, each at the state
// the caller holds. Names compare case-insensitively, as in Key Vault; an
// object may be listed once.
type Request struct {
	Objects []Object `json:"objects"`
}

// Object is one object to watch at its latest version.
type Object struct {
	Vault string `json:"vault"`
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	// ETag is the ETag of the caller's last read of the object's latest
	// version (its If-None-Match).
	ETag string `json:"etag"`
}

// Type is a record's type.
type Type string

// The record types; a client ignores types it does not know.
const (
	// Changed: the object's latest version no longer matches the state
	// last reported (or, before Ready, the request's ETag). ETag is its
	// tag now, or empty when it cannot be read at its latest version
	// (deleted, disabled, expired): a read says why.
	Changed Type = "changed"
	// Dropped: the object is no longer watched for the caller, who may not
	// read it (any more), or whose vault is gone; a read says why. Dropped
	// is sent only by a re-authorization pass (see Authorized), never at
	// the moment the object changes.
	Dropped Type = "dropped"
	// Ready ends the first pass: every object of the request that was not
	// reported Changed or Dropped is at the caller's ETag, and the caller
	// may read it. Reauthorize is the period of the passes that follow.
	Ready Type = "ready"
	// Authorized ends a re-authorization pass: every change committed
	// before the pass began has been reported, and every object not
	// reported Dropped is still readable by the caller.
	Authorized Type = "authorized"
	// End: the server ends the stream; Reason says why, and the caller
	// opens a new one (with a fresh token for ReasonExpired).
	End Type = "end"
)

// Reasons of an End record.
const (
	ReasonExpired     = "expired"     // the stream's token expired
	ReasonShutdown    = "shutdown"    // the replica is stopping
	ReasonUnavailable = "unavailable" // the replica cannot reach its store
)

// Record is one line of the answer.
type Record struct {
	Type Type `json:"type"`
	// Object is the index, in the request's list, of the object that
	// Changed or was Dropped (0 in other records).
	Object int `json:"object"`
	// ETag is a Changed object's tag now.
	ETag string `json:"etag,omitempty"`
	// Reauthorize is the period of the re-authorization passes, in
	// seconds (Ready).
	Reauthorize int `json:"reauthorize,omitempty"`
	// Reason says why the stream ends (End).
	Reason string `json:"reason,omitempty"`
}
