package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFullDisk runs the server on a data directory that is a tiny tmpfs
// and fills it: writes answer 507 in Azure's error shape without losing
// anything acknowledged before, reads keep working, the audit log raises
// its "sink failing" alarm, and once space is freed, writes work again.
func TestFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	d := startDev(t, dir, "--metrics-addr", "127.0.0.1:0")
	hc, tok := vaultClient(t, d.Env)
	base := strings.TrimSuffix(d.Env.VaultURL, "/") + "/secrets/"

	// What the disk will not take once full is held back here: a filler
	// that takes the rest of the space, removed later to free it.
	if err := put(hc, tok, base+"kept?api-version=7.6", "acknowledged before the disk filled"); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break // full
		}
	}
	f.Close()

	big := strings.Repeat("x", 20<<10)
	var status int
	var body []byte
	for i := range 200 {
		status, body = putRaw(t, hc, tok, fmt.Sprintf("%sfill%d?api-version=7.6", base, i), big)
		if status != 200 {
			break
		}
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	json.Unmarshal(body, &e)
	if status != http.StatusInsufficientStorage || e.Error.Code != "InsufficientStorage" || !strings.Contains(e.Error.Message, "disk space") {
		t.Fatalf("a write to a full disk: %d %s", status, body)
	}
	if v, err := get(hc, tok, base+"kept?api-version=7.6"); err != nil || v != "acknowledged before the disk filled" {
		t.Fatalf("a read with the disk full: %q %v", v, err)
	}
	// The audit log is on the same disk: its alarm is up.
	metrics := metricsOf(t, d)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(metrics(), "coffer_audit_sink_failing 1") {
		if time.Now().After(deadline) {
			t.Fatalf("the audit sink is not reported failing with the disk full:\n%s", metrics())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Space comes back: the server needs no restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if status, body := putRaw(t, hc, tok, base+"after?api-version=7.6", "written once space was freed"); status != 200 {
		t.Fatalf("a write after space was freed: %d %s", status, body)
	}
	for !strings.Contains(metrics(), "coffer_audit_sink_failing 0") {
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatalf("the audit sink did not recover:\n%s", metrics())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v, err := get(hc, tok, base+"kept?api-version=7.6"); err != nil || v != "acknowledged before the disk filled" {
		t.Fatalf("the value acknowledged before: %q %v", v, err)
	}
	d.stop(t)
	// Reopened, the store holds every acknowledged write.
	d = startDev(t, dir)
	hc, tok = vaultClient(t, d.Env)
	base = strings.TrimSuffix(d.Env.VaultURL, "/") + "/secrets/"
	for name, want := range map[string]string{"kept": "acknowledged before the disk filled", "after": "written once space was freed"} {
		if v, err := get(hc, tok, base+name+"?api-version=7.6"); err != nil || v != want {
			t.Fatalf("after a restart, %s = %q %v", name, v, err)
		}
	}
}

func putRaw(t *testing.T, hc *http.Client, tok, url, value string) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"value": value})
	req, _ := http.NewRequest("PUT", url, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// metricsOf returns a function that reads the dev server's /metrics, at the
// address its log names.
func metricsOf(t *testing.T, d *devServer) func() string {
	t.Helper()
	re := regexp.MustCompile(`msg="metrics and health listening" addr=(\S+)`)
	var addr string
	deadline := time.Now().Add(30 * time.Second)
	for addr == "" {
		if m := re.FindStringSubmatch(d.Stderr.String()); m != nil {
			addr = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics address in the log:\n%s", d.Stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
}
