package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// TestRoutingErrorsAreAzureJSON checks the answers the server gives before
// any API handles a request: Azure's error body, labelled as JSON (they
// were once written with http.Error, which labels them text/plain).
func TestRoutingErrorsAreAzureJSON(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "root.key")
	if err := rootkey.WriteFile(keyFile, rootkey.Generate()); err != nil {
		t.Fatal(err)
	}
	srv, err := New(context.Background(), Options{StoreOptions: StoreOptions{DataDir: dir, RootKeyFile: keyFile}, Listen: "127.0.0.1:0", DNSSuffix: "vault.test", InsecureHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	apex := srv.Endpoints().Apex()
	for name, tc := range map[string]struct {
		host, path string
		status     int
		code       string
	}{
		"unknown apex path": {apex, "/nothing-here", http.StatusNotFound, "NotFound"},
		"foreign host":      {"other.example:443", "/", http.StatusMisdirectedRequest, "BadParameter"},
	} {
		req := httptest.NewRequest("GET", "http://"+tc.host+tc.path, nil)
		req.Host = tc.host
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code != tc.status || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
			t.Errorf("%s: %d %q, want %d as JSON", name, rec.Code, rec.Header().Get("Content-Type"), tc.status)
		}
		if b, ok := azerror.Parse(rec.Body.Bytes()); !ok || b.Error.Code != tc.code || b.Error.Message == "" {
			t.Errorf("%s: body %s, want code %s with a message", name, rec.Body, tc.code)
		}
	}
}

// TestOptionsValidate checks that bad options are reported by option name.
func TestOptionsValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		o    Options
		want string
	}{
		"no data dir":          {Options{DNSSuffix: "vault.test", InsecureHTTP: true}, "DataDir is required"},
		"no suffix":            {Options{StoreOptions: StoreOptions{DataDir: "d"}, InsecureHTTP: true}, "DNSSuffix is required"},
		"one label":            {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "localhost", InsecureHTTP: true}, "DNSSuffix DNS suffix"},
		"no tls":               {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "vault.test"}, "TLSCertFile is required"},
		"no key":               {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "vault.test", TLSCertFile: "c"}, "TLSKeyFile is required"},
		"short tokens":         {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "vault.test", InsecureHTTP: true, TokenLifetime: 1}, "TokenLifetime 1ns is out of range"},
		"bad public port":      {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "vault.test", InsecureHTTP: true, PublicPort: 70000}, "PublicPort 70000"},
		"negative audit size":  {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "vault.test", InsecureHTTP: true, AuditMaxSizeMB: -1}, "AuditMaxSizeMB -1 is negative"},
		"negative audit files": {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "vault.test", InsecureHTTP: true, AuditMaxSizeMB: 1, AuditMaxFiles: -1}, "AuditMaxFiles -1 is negative"},
		"audit files, no size": {Options{StoreOptions: StoreOptions{DataDir: "d"}, DNSSuffix: "vault.test", InsecureHTTP: true, AuditMaxFiles: 3}, "AuditMaxFiles needs AuditMaxSizeMB"},
	} {
		err := tc.o.Validate()
		if err == nil || len(err.Error()) < len(tc.want) || err.Error()[:len(tc.want)] != tc.want {
			t.Errorf("%s: %v, want %q...", name, err, tc.want)
		}
	}
}
