package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/server/storage/transfer"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

// op runs `coffer operator args...` and returns its combined output and
// exit code.
func op(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return run(t, 2*time.Minute, []string{rootkey.EnvVar + "="}, append([]string{"operator"}, args...)...)
}

func mustOp(t *testing.T, args ...string) string {
	t.Helper()
	out, code := op(t, args...)
	if code != 0 {
		t.Fatalf("coffer operator %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	t.Logf("coffer operator %s\n%s", strings.Join(args, " "), out)
	return out
}

// The operations round trip, through the real binary: a store a dev server
// wrote goes to etcd (migrate, interrupted by kill -9 and resumed), is
// saved and restored (snapshot), checked (verify, clean and damaged), and
// comes back to bolt, where a server reads every value.
func TestOperations(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	// Enough entries that a migration takes many batches.
	hc, tok := vaultClient(t, d.Env)
	base := strings.TrimSuffix(d.Env.VaultURL, "/")
	const n = 1500
	values := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				name, value := fmt.Sprintf("ops-%04d", i), fmt.Sprintf("OPSCANARY-value-%04d", i)
				if err := put(hc, tok, base+"/secrets/"+name+"?api-version=7.6", value); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				values[name] = value
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	ef := devenv.Path(dir)
	pol := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(pol, []byte(mustCLI(t, ef, "certificate", "get-default-policy")), 0o600)
	mustCLI(t, ef, "certificate", "create", "--vault-name", "demo", "--name", "web", "--policy", "@"+pol)
	mustCLI(t, ef, "secret", "delete", "--vault-name", "demo", "--name", "ops-0000")
	d.stop(t)
	keyFile := filepath.Join(dir, "root.key")

	cluster := etcdtest.Start(t, 1)
	ep := cluster.Endpoint(0)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()

	t.Run("MigrateResumesAfterKill9", func(t *testing.T) {
		// Killed once it has begun; whether the kill lands midway is up to
		// the machine, so what is checked after it holds either way.
		cmd := exec.Command(binary, "operator", "migrate", "--from", "bolt:"+dir, "--to", "etcd:"+ep, "--etcd-prefix", "/killed/")
		cmd.Env = append(cmd.Environ(), rootkey.EnvVar+"=")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() && !strings.Contains(sc.Text(), "entries merged") {
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		marked, err := cli.Get(ctx, "/killed/"+transfer.MarkerKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(marked.Kvs) > 0 {
			t.Log("the kill landed midway: the target is marked unfinished")
			// A server refuses the half-copied store.
			out, code := run(t, time.Minute, []string{rootkey.EnvVar + "=" + mustKey(t, keyFile).Encode()}, "server", "--storage", "etcd",
				"--etcd-endpoints", ep, "--etcd-prefix", "/killed/", "--data-dir", t.TempDir(), "--dns-suffix", "kv.test", "--listen", "127.0.0.1:0", "--insecure-http", "--metrics-addr", "")
			if code != 1 || !strings.Contains(out, "unfinished migrate") {
				t.Fatalf("a server on the half-migrated store: exit %d\n%s", code, out)
			}
		} else {
			t.Log("the kill landed after the migration finished")
		}
		out2 := mustOp(t, "migrate", "--from", "bolt:"+dir, "--to", "etcd:"+ep, "--etcd-prefix", "/killed/", "--root-key-file", keyFile)
		for _, want := range []string{"Verified: the target holds exactly the source's", "No damage.", "Migration complete"} {
			if !strings.Contains(out2, want) {
				t.Fatalf("resumed migration's output lacks %q", want)
			}
		}
		if len(marked.Kvs) > 0 && !strings.Contains(out2, "Resumed an earlier, unfinished run") {
			t.Fatal("the second run did not say it resumed")
		}
	})

	t.Run("MigrateRefusesANonEmptyTarget", func(t *testing.T) {
		if _, err := cli.Put(ctx, "/taken/vaults/other", "someone else's"); err != nil {
			t.Fatal(err)
		}
		out, code := op(t, "migrate", "--from", "bolt:"+dir, "--to", "etcd:"+ep, "--etcd-prefix", "/taken/")
		if code != 1 || !strings.Contains(out, "the target is not empty") {
			t.Fatalf("migrate into a non-empty prefix: exit %d\n%s", code, out)
		}
	})

	snap := filepath.Join(t.TempDir(), "coffer.snap")
	t.Run("SnapshotSaveAndRestore", func(t *testing.T) {
		mustOp(t, "snapshot", "save", "--storage", "etcd", "--etcd-endpoints", ep, "--etcd-prefix", "/killed/", "--root-key-file", keyFile, "--out", snap)
		file, _ := os.ReadFile(snap)
		if strings.Contains(string(file), "OPSCANARY") {
			t.Fatal("the snapshot holds a secret value in plaintext")
		}
		out := mustOp(t, "snapshot", "restore", "--in", snap, "--storage", "etcd", "--etcd-endpoints", ep, "--etcd-prefix", "/restored/", "--root-key-file", keyFile)
		for _, want := range []string{"Its MAC matches under the root key", "No damage.", "Restore complete"} {
			if !strings.Contains(out, want) {
				t.Fatalf("restore's output lacks %q", want)
			}
		}
		if out, code := op(t, "snapshot", "restore", "--in", snap, "--storage", "etcd", "--etcd-endpoints", ep, "--etcd-prefix", "/taken/"); code != 1 || !strings.Contains(out, "not empty") {
			t.Fatalf("restore into a non-empty store: exit %d\n%s", code, out)
		}
		damaged := filepath.Join(t.TempDir(), "damaged.snap")
		file[len(file)/2] ^= 1
		os.WriteFile(damaged, file, 0o600)
		if out, code := op(t, "snapshot", "restore", "--in", damaged, "--data-dir", t.TempDir()); code != 1 || !strings.Contains(out, "is damaged") {
			t.Fatalf("restore of a damaged snapshot: exit %d\n%s", code, out)
		}
	})

	t.Run("VerifyReportsDamage", func(t *testing.T) {
		flags := []string{"verify", "--storage", "etcd", "--etcd-endpoints", ep, "--etcd-prefix", "/restored/", "--root-key-file", keyFile}
		mustOp(t, flags...)
		// One byte flipped in a version, and another version deleted.
		vers, err := cli.Get(ctx, "/restored/o/demo/secrets/v/ops-0001/", clientv3.WithPrefix())
		if err != nil || len(vers.Kvs) != 1 {
			t.Fatalf("versions of ops-0001: %v %v", vers, err)
		}
		flipped := string(vers.Kvs[0].Key)
		v := vers.Kvs[0].Value
		v[len(v)-1] ^= 1
		cli.Put(ctx, flipped, string(v))
		gone, _ := cli.Get(ctx, "/restored/o/demo/secrets/v/ops-0002/", clientv3.WithPrefix())
		cli.Delete(ctx, string(gone.Kvs[0].Key))
		out, code := op(t, flags...)
		t.Logf("verify of the damaged store: exit %d\n%s", code, out)
		if code != 1 {
			t.Fatalf("verify of a damaged store exited %d", code)
		}
		for _, want := range []string{
			"damage: " + strings.TrimPrefix(flipped, "/restored/") + ": the sealed blob does not open",
			"damage: o/demo/secrets/h/ops-0002: names current version",
			"the store is damaged: 2 problems",
		} {
			if !strings.Contains(out, want) {
				t.Fatalf("verify's output lacks %q", want)
			}
		}
	})

	// Back to bolt, from the etcd copy, and served: every value reads back.
	t.Run("MigrateBackAndServe", func(t *testing.T) {
		back := filepath.Join(t.TempDir(), "back")
		mustOp(t, "migrate", "--from", "etcd:"+ep, "--etcd-prefix", "/killed/", "--to", "bolt:"+back, "--root-key-file", keyFile)
		for _, f := range []string{"root.key", "dev.env"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			os.WriteFile(filepath.Join(back, f), b, 0o600)
		}
		d2 := startDev(t, back)
		hc, tok := vaultClient(t, d2.Env)
		base := strings.TrimSuffix(d2.Env.VaultURL, "/")
		for name, want := range values {
			got, err := get(hc, tok, base+"/secrets/"+name+"?api-version=7.6")
			if name == "ops-0000" {
				if err == nil {
					t.Fatal("the deleted secret came back live")
				}
				continue
			}
			if err != nil || got != want {
				t.Fatalf("%s after bolt -> etcd -> bolt: %q, %v; want %q", name, got, err, want)
			}
		}
		if out := mustCLI(t, devenv.Path(back), "certificate", "show", "--vault-name", "demo", "--name", "web"); !strings.Contains(out, "web") {
			t.Fatalf("certificate after the round trip: %s", out)
		}
		d2.stop(t)
	})
}

func mustKey(t *testing.T, path string) rootkey.Key {
	t.Helper()
	k, err := rootkey.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
