package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/cofferhq/coffer/internal/server/acme"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// acmeTokenPrefix holds the http-01 answers of orders in progress, in the
// store, so that whichever replica the CA reaches on ACMEHTTPListen
// answers, whichever replica placed the order.
const acmeTokenPrefix = "acmetokens/"

// acmeTokens is the acme.Tokens of the store.
type acmeTokens struct{ b *barrier.Barrier }

func (t acmeTokens) PutToken(ctx context.Context, token, keyAuth string) error {
	if !validToken(token) {
		return errors.New("the CA's http-01 token is not base64url")
	}
	return t.b.Apply(ctx, nil, []barrier.Op{{Key: acmeTokenPrefix + token, Value: []byte(keyAuth)}})
}

func (t acmeTokens) DeleteToken(ctx context.Context, token string) error {
	return t.b.Apply(ctx, nil, []barrier.Op{{Key: acmeTokenPrefix + token, Delete: true}})
}

// lookup returns a token's key authorization, after catching up with the
// store, so an answer another replica wrote a moment ago is found.
func (t acmeTokens) lookup(ctx context.Context, token string) (string, error) {
	if !validToken(token) {
		return "", barrier.ErrNotFound
	}
	ctx, err := t.b.Sync(ctx)
	if err != nil {
		return "", err
	}
	rec, err := t.b.Get(ctx, acmeTokenPrefix+token)
	if err != nil {
		return "", err
	}
	return string(rec.Value), nil
}

// validToken reports whether token is base64url of a sane length, as RFC
// 8555 §8.1 makes them: anything else is no key the store should see.
func validToken(token string) bool {
	if len(token) == 0 || len(token) > 256 {
		return false
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// ACMEHTTPAddr is the bound address of the http-01 listener, or "" when
// it is off.
func (s *Server) ACMEHTTPAddr() string {
	if s.acmeLn == nil {
		return ""
	}
	return s.acmeLn.Addr().String()
}

// serveACMEHTTP answers http-01 challenges on plain HTTP until ctx ends.
// The CA reaches it on port 80 of the certified names, so it serves
// nothing but the challenge path.
func (s *Server) serveACMEHTTP(ctx context.Context, ln net.Listener) {
	hs := &http.Server{
		Handler:           acme.HTTP01Handler(acmeTokens{s.store.Barrier}.lookup),
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		MaxHeaderBytes: 8 << 10, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("the ACME http-01 listener stopped", "err", err)
	}
}
