package bench

import (
	"crypto/tls"
	"os"
	"testing"

	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/server"
)

func tlsConfig(b *testing.B, f pki.Files) *tls.Config {
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		b.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}}
}

func TestMain(m *testing.M) {
	// The server and the load generator share this process; run it with the
	// GC setting `coffer server` uses.
	server.TuneGC()
	os.Exit(m.Run())
}
