package provider

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/mounterr"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// A throttled read is tried again after the vault's Retry-After, and a
// Retry-After longer than a mount should wait fails it at once. Coffer's
// vault does not throttle reads, so a stand-in on loopback answers 429.
func TestThrottledReadsHonourRetryAfter(t *testing.T) {
	var calls atomic.Int32
	retryAfter := "1"
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			w.Header().Set("Retry-After", retryAfter)
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"error":{"code":"Throttled","message":"slow down"}}`))
			return
		}
		w.Header().Set("ETag", `"v1.x"`)
		w.Write([]byte(`{"value":"s3cret","id":"` + "https://" + r.Host + `/secrets/db/v1"}`))
	}))
	defer vault.Close()
	s, err := New(Config{VaultSuffix: "vault.invalid:1", Vault: &kvclient.Client{HTTP: vault.Client()}, Auth: &authclient.Client{},
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	f, err := s.fetchPatiently(ctx, reader{base: vault.URL, token: "token"}, "secret", "db", "")
	if err != nil || f.Value != "s3cret" || calls.Load() != 3 {
		t.Fatalf("after two 429s: %v, %d calls", err, calls.Load())
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("retried after %v, before the vault's Retry-After of 1 s, twice", took)
	}

	calls.Store(0)
	retryAfter = "60"
	if _, err := s.fetchPatiently(ctx, reader{base: vault.URL, token: "token"}, "secret", "other", ""); kvclient.Classify(err) != mounterr.Throttled || calls.Load() != 1 {
		t.Fatalf("a Retry-After of a minute: %v after %d calls, want Throttled after 1", err, calls.Load())
	}
}
