// Package azerror is the error body of Azure's REST APIs, which Key Vault's
// data plane and Coffer's management API answer with and their clients
// read: {"error":{"code","message","innererror":{"code"}}}.
package azerror

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Body is the whole error answer.
type Body struct {
	Error Detail `json:"error"`
}

// Detail is the error object. Key Vault puts a second, more specific code
// in InnerError (AccessDenied or ForbiddenByRbac under Forbidden, say).
type Detail struct {
	Code       string  `json:"code"`
	Message    string  `json:"message"`
	InnerError *Detail `json:"innererror,omitempty"`
}

// New returns the body for code, an inner code (empty for none) and msg.
func New(code, inner, msg string) Body {
	b := Body{Error: Detail{Code: code, Message: msg}}
	if inner != "" {
		b.Error.InnerError = &Detail{Code: inner}
	}
	return b
}

// Inner is the inner code, or "".
func (b Body) Inner() string {
	if b.Error.InnerError == nil {
		return ""
	}
	return b.Error.InnerError.Code
}

// Parse reads an error answer; ok is false when data is not one.
func Parse(data []byte) (b Body, ok bool) {
	if json.Unmarshal(data, &b) != nil || b.Error.Code == "" && b.Error.Message == "" {
		return Body{}, false
	}
	return b, true
}

// Write sends an error answer with status, labelled as JSON.
func Write(w http.ResponseWriter, status int, code, inner, msg string) {
	body, err := json.Marshal(New(code, inner, msg))
	if err != nil { // a Detail of strings always encodes
		body = []byte(`{"error":{"code":"InternalServerError","message":"internal error"}}`)
		status = http.StatusInternalServerError
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
