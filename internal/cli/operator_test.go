//go:build !node

package cli

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

func runMain(args ...string) (int, string) {
	var out bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &out)
	return code, out.String()
}

// operator init runs as an init container on every start of a server pod:
// the second run must be a no-op when asked, and an error otherwise.
func TestOperatorInitIsRepeatableOnRequest(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "root.key")
	if code, out := runMain("operator", "generate-root-key", "--out", key); code != 0 {
		t.Fatalf("generate-root-key: %d %s", code, out)
	}
	data := filepath.Join(dir, "data")
	init := []string{"operator", "init", "--data-dir", data, "--dns-suffix", "vault.example.com", "--root-key-file", key}
	if code, out := runMain(append(init, "--out", filepath.Join(dir, "admin.env"))...); code != 0 {
		t.Fatalf("first init: %d %s", code, out)
	}
	if code, out := runMain(append(init, "--out", filepath.Join(dir, "again.env"))...); code == 0 || !strings.Contains(out, "already initialised") {
		t.Fatalf("second init without --skip-if-initialised: %d %s", code, out)
	}
	if code, out := runMain(append(init, "--out", filepath.Join(dir, "again.env"), "--skip-if-initialised")...); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("second init with --skip-if-initialised: %d %s", code, out)
	}
	for _, bad := range [][]string{
		append(init, "--out", "x", "--out-secret", "ns/name"),
		init,
		append(init, "--out-secret", "no-namespace"),
	} {
		if code, out := runMain(bad...); code != 2 {
			t.Errorf("%v: exit %d %s", bad[len(bad)-2:], code, out)
		}
	}
}

// The init containers of replicas that start together on a new etcd store
// run operator init at once: exactly one bootstraps (one tenant, one
// administrator, one credentials file), and the others find its work and
// change nothing.
func TestOperatorInitConcurrentRunsOnEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	dir := t.TempDir()
	key := filepath.Join(dir, "root.key")
	if code, out := runMain("operator", "generate-root-key", "--out", key); code != 0 {
		t.Fatalf("generate-root-key: %d %s", code, out)
	}
	endpoints := strings.Join(etcd.Endpoints(), ",")
	const runs = 4
	var wg sync.WaitGroup
	codes, outs := make([]int, runs), make([]string, runs)
	for i := range runs {
		wg.Go(func() {
			codes[i], outs[i] = runMain("operator", "init", "--storage", "etcd", "--etcd-endpoints", endpoints, "--dns-suffix", "vault.example.com",
				"--root-key-file", key, "--out", filepath.Join(dir, fmt.Sprintf("admin%d.env", i)), "--skip-if-initialised")
		})
	}
	wg.Wait()
	var first int
	initialised := 0
	for i := range runs {
		if codes[i] != 0 {
			t.Errorf("run %d: exit %d: %s", i, codes[i], outs[i])
		}
		switch {
		case strings.Contains(outs[i], "Initialised."):
			initialised++
			first = i
		case !strings.Contains(outs[i], "already initialised; nothing to do"):
			t.Errorf("run %d neither initialised nor found the store initialised: %s", i, outs[i])
		}
	}
	if initialised != 1 {
		t.Fatalf("%d runs bootstrapped, want 1:\n%s", initialised, strings.Join(outs, "\n"))
	}
	files, _ := filepath.Glob(filepath.Join(dir, "admin*.env"))
	if len(files) != 1 {
		t.Errorf("credentials files %v, want one", files)
	}
	env, err := devenv.Read(filepath.Join(dir, fmt.Sprintf("admin%d.env", first)))
	if err != nil {
		t.Fatal(err)
	}

	// The store holds what the one run created, and its secret is valid.
	ctx := context.Background()
	st, err := server.OpenStore(ctx, server.StoreOptions{Storage: server.StorageEtcd, Etcd: server.EtcdOptions{Endpoints: etcd.Endpoints()}, RootKeyFile: key}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tenants, err := st.Barrier.Scan(ctx, "authority/tenants/", "", 100)
	if err != nil || len(tenants) != 1 {
		t.Fatalf("%d tenants in the store (%v), want 1", len(tenants), err)
	}
	state, ok, err := bootstrap.Load(ctx, st.Barrier)
	if err != nil || !ok || state.TenantID != env.TenantID || state.AdminAppID != env.ClientID {
		t.Fatalf("bootstrap state %+v %v %v; the credentials name %s %s", state, ok, err, env.TenantID, env.ClientID)
	}
	roles, err := rbac.Open(ctx, st.Barrier, nil)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := authority.Open(ctx, st.Barrier, authority.Config{Host: "https://vault.example.com", Roles: roles}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !auth.VerifyClientSecret(ctx, env.TenantID, env.ClientID, env.ClientSecret) {
		t.Error("the stored administrator secret is not valid")
	}
}
