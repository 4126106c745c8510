package csi

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/cofferhq/coffer/internal/csidriver"
	"github.com/cofferhq/coffer/internal/testserver"
)

// csi-test's sanity suite against the driver, with Coffer's provider on
// its provider socket and a live vault behind it. The driver offers no
// Controller service (it does not advertise CONTROLLER_SERVICE: ephemeral
// inline volumes are never created or attached), so the suite's
// "[Controller Server]" specs, which create volumes, do not apply and are
// skipped by name; every Identity and Node spec runs.
func TestCSISanity(t *testing.T) {
	if err := flag.Set("ginkgo.skip", `\[Controller Server\]`); err != nil {
		t.Fatal(err)
	}
	env := testserver.Start(t, testserver.Options{})
	p := startProvider(t, env, "coffer")
	sockDir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	endpoint := "unix://" + filepath.Join(sockDir, "csi.sock")
	d, err := csidriver.New(csidriver.Config{NodeID: "sanity-node", ProviderDirs: []string{p.Dir}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := csidriver.Listen(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	base := t.TempDir()
	cfg := sanity.NewTestConfig()
	cfg.Address = endpoint
	cfg.TargetPath = filepath.Join(base, "target")
	cfg.StagingPath = filepath.Join(base, "staging")
	cfg.IdempotentCount = 0
	cfg.CreateTargetDir = func(p string) (string, error) { return p, os.MkdirAll(p, 0o750) }
	cfg.CreateStagingDir = func(p string) (string, error) { return p, os.MkdirAll(p, 0o750) }
	cfg.RemoveTargetPath = os.RemoveAll
	cfg.RemoveStagingPath = os.RemoveAll
	sanity.Test(t, cfg)
}
