package csi

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cofferhq/coffer/internal/node/csidriver"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testserver"
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
	// The daemon as the csi-driver command builds it, on a real apiserver
	// with no SecretProviderClass: every publish the suite attempts fails
	// on its arguments or on the missing class.
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{repoFile(t, "deploy/crds")}})
	ctx, cancel := context.WithCancel(context.Background())
	d, err := csidriver.NewDaemon(ctx, csidriver.Options{Settings: csidriver.Settings{NodeID: "sanity-node", Endpoint: endpoint, ProviderDirs: []string{p.Dir}},
		Kube: kube.Config, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	base := t.TempDir()
	cfg := sanity.NewTestConfig()
	cfg.TargetPath = filepath.Join(base, "target")
	cfg.StagingPath = filepath.Join(base, "staging")
	cfg.IdempotentCount = 0
	cfg.CreateTargetDir = func(p string) (string, error) { return p, os.MkdirAll(p, 0o750) }
	cfg.CreateStagingDir = func(p string) (string, error) { return p, os.MkdirAll(p, 0o750) }
	cfg.RemoveTargetPath = os.RemoveAll
	cfg.RemoveStagingPath = os.RemoveAll

	// The suite's own dial (csi-test utils.Connect) waits for a state
	// change after reading the state, so a connection that is already
	// Ready when it looks waits a minute and fails; CI hit that. The suite
	// reuses a connection it is given while its address is unchanged, so
	// it gets one that waited properly, and an empty address.
	conn := readyConn(t, endpoint)
	sc := sanity.GinkgoTest(&cfg)
	sc.Conn = conn
	gomega.RegisterFailHandler(ginkgo.Fail)
	ginkgo.RunSpecs(t, "CSI Driver Test Suite")
	sc.Finalize()
}

// readyConn dials endpoint and waits until the connection is Ready.
func readyConn(t *testing.T, endpoint string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("localhost"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			conn.Close()
			t.Fatalf("the driver at %s is not Ready after a minute: %s", endpoint, s)
		}
	}
	return conn
}
