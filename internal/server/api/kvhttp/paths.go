package kvhttp

import (
	"net/http"
	"net/url"
	"strings"
)

// collapseSlashes serves a path with runs of slashes as the same path with
// single ones. Key Vault serves https://v.vault.azure.net//secrets/n, which
// scripts that join a vault URL ending in "/" with "/secrets" send (seed
// 002's curl does); ServeMux would answer it with a redirect that curl does
// not follow. It works on the escaped path, so an encoded slash (%2F) stays
// inside its segment and never becomes a separator, and a trailing slash
// stays: /secrets/n/ (an empty version) means the latest.
func collapseSlashes(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		esc := r.URL.EscapedPath()
		if !strings.Contains(esc, "//") {
			next.ServeHTTP(w, r)
			return
		}
		var b strings.Builder
		for i := 0; i < len(esc); i++ {
			if esc[i] == '/' && i > 0 && esc[i-1] == '/' {
				continue
			}
			b.WriteByte(esc[i])
		}
		path, err := url.PathUnescape(b.String())
		if err != nil {
			// Unreachable: the server already unescaped it once.
			next.ServeHTTP(w, r)
			return
		}
		u := *r.URL
		u.Path, u.RawPath = path, b.String()
		r2 := r.WithContext(r.Context())
		r2.URL = &u
		next.ServeHTTP(w, r2)
	})
}

// refuseDotSegments answers a path with a "." or ".." segment (also
// percent-encoded) with Key Vault's 400. ServeMux would answer it with a
// redirect to the cleaned path: an empty 307 rather than an error the SDKs
// read, and one that sends a PUT's body to another object than the one
// the caller named.
func refuseDotSegments(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hasDotSegment(r.URL.EscapedPath()) {
			writeErr(w, http.StatusBadRequest, "BadParameter", "", "The request URI contains a '.' or '..' segment; object names and versions are letters, digits and hyphens.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hasDotSegment reports whether an escaped path has a "." or ".." segment,
// also percent-encoded. It allocates nothing: it runs on every request.
func hasDotSegment(esc string) bool {
	if !strings.ContainsAny(esc, ".%") {
		return false // the common case: no segment can be a dot
	}
	for len(esc) > 0 {
		seg := esc
		if i := strings.IndexByte(esc, '/'); i >= 0 {
			seg, esc = esc[:i], esc[i+1:]
		} else {
			esc = ""
		}
		// A dot segment is "." or "..", each dot perhaps "%2e" or "%2E":
		// at most six bytes, all of them among ".%2eE".
		if len(seg) > 0 && len(seg) <= 6 && strings.Trim(seg, ".%2eE") == "" {
			if s, err := url.PathUnescape(seg); err == nil && (s == "." || s == "..") {
				return true
			}
		}
	}
	return false
}
