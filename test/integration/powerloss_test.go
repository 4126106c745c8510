package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPowerLoss emulates a power cut under load: the data directory is an
// ext4 filesystem on a loop device; the server is killed mid-burst and the
// device's contents are copied at once, before the kernel writes back what
// was never synced, so the copy holds only what reached the device, as a
// disk would after a power loss. (No fault-injecting device-mapper target
// or FUSE layer runs in this sandbox; the loop device's backing file is
// the disk.) Mounted, the copy replays its journal; the store must open,
// verify clean, and hold every acknowledged write.
func TestPowerLoss(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (e2fsprogs, util-linux: scripts/deps.sh)", tool)
		}
	}
	work := t.TempDir()
	img, disk := filepath.Join(work, "disk.img"), filepath.Join(work, "disk")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("truncate", "-s", "256M", img)
	run("mkfs.ext4", "-q", "-F", img)
	os.Mkdir(disk, 0o700)
	mount := func(image, at string) {
		t.Helper()
		run("mount", "-o", "loop", image, at)
		t.Cleanup(func() { exec.Command("umount", at).Run() })
	}
	mount(img, disk)
	dir := filepath.Join(disk, "data")
	d := startDev(t, dir)
	hc, tok := vaultClient(t, d.Env)
	base := strings.TrimSuffix(d.Env.VaultURL, "/")

	var mu sync.Mutex
	var acked []ackedWrite
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				name, value := fmt.Sprintf("pl-%d-%d", w, i%5), fmt.Sprintf("w%d-%d", w, i)
				if version, ok := putVersion(hc, tok, base, name, value); ok {
					mu.Lock()
					acked = append(acked, ackedWrite{name, version, value})
					mu.Unlock()
				}
			}
		}()
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 500 {
			break
		}
	}
	// What was acknowledged before the kill was synced before it was
	// acknowledged; the rest of the page cache is lost with the copy.
	mu.Lock()
	survivors := append([]ackedWrite(nil), acked...)
	mu.Unlock()
	d.kill()
	copyImg := filepath.Join(work, "after-power-loss.img")
	run("cp", "--sparse=always", img, copyImg)
	stop()
	wg.Wait()
	if len(survivors) < 500 {
		t.Fatalf("only %d writes acknowledged in a minute; the load did not run", len(survivors))
	}

	after := filepath.Join(work, "after")
	os.Mkdir(after, 0o700)
	mount(copyImg, after)
	dir2 := filepath.Join(after, "data")
	out, err := exec.Command(binary, "operator", "verify", "--data-dir", dir2, "--root-key-file", filepath.Join(dir2, "root.key")).CombinedOutput()
	if err != nil {
		t.Fatalf("operator verify after the power loss: %v\n%s", err, out)
	}
	d2 := startDev(t, dir2)
	hc2, tok2 := vaultClient(t, d2.Env)
	checkAcked(t, hc2, tok2, strings.TrimSuffix(d2.Env.VaultURL, "/"), survivors, "after the power loss")
	t.Logf("%d acknowledged versions survived the power loss; verify: %s", len(survivors), lastLine(out))
}
