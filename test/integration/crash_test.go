package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/cli/client"
)

// crashTrials is how many kill -9 trials TestCrashTrials runs: a couple in
// `make test`, COFFER_CRASH_TRIALS=20 in `make crash-trials`.
func crashTrials(t *testing.T) int {
	if s := os.Getenv("COFFER_CRASH_TRIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("COFFER_CRASH_TRIALS=%q is not a positive count", s)
		}
		return n
	}
	return 2
}

// ackedWrite is a secret version the server acknowledged.
type ackedWrite struct{ name, version, value string }

// TestCrashTrials kills coffer dev with SIGKILL at random moments of a
// mixed load (secret and key writes, certificate issuance, data-key and
// root-key rotation, delete, purge and restore), then checks each time
// that the store opens, that `coffer operator verify` finds no damage, and
// that every acknowledged secret version reads back.
func TestCrashTrials(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	trials := crashTrials(t)
	var acked []ackedWrite
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	for trial := range trials {
		d := startDev(t, dir)
		hc, tok := vaultClient(t, d.Env)
		admin, err := client.New(d.Env)
		if err != nil {
			t.Fatal(err)
		}
		base := strings.TrimSuffix(d.Env.VaultURL, "/")
		// What earlier trials acknowledged is still there.
		checkAcked(t, hc, tok, base, acked, fmt.Sprintf("trial %d, at start", trial))

		var mu sync.Mutex
		var ops atomic.Int64
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		loop := func(op func(i int)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					op(i)
					ops.Add(1)
				}
			}()
		}
		for w := range 8 {
			loop(func(i int) {
				name := fmt.Sprintf("crash-%d-%d", w, i%4)
				value := fmt.Sprintf("t%d-w%d-%d", trial, w, i)
				if version, ok := putVersion(hc, tok, base, name, value); ok {
					mu.Lock()
					acked = append(acked, ackedWrite{name, version, value})
					mu.Unlock()
				}
			})
		}
		loop(func(i int) {
			send(hc, tok, "POST", fmt.Sprintf("%s/keys/k%d/create?api-version=7.6", base, i%3), `{"kty":"EC","crv":"P-256"}`)
		})
		loop(func(i int) {
			send(hc, tok, "POST", fmt.Sprintf("%s/certificates/c%d/create?api-version=7.6", base, i%2),
				`{"policy":{"key_props":{"kty":"EC","crv":"P-256"},"x509_props":{"subject":"CN=crash","validity_months":12},"issuer":{"name":"Self"}}}`)
			time.Sleep(50 * time.Millisecond) // issuance is asynchronous; do not queue hundreds
		})
		loop(func(i int) {
			// A secret deleted, purged, and a backup of another restored.
			name := fmt.Sprintf("gone-%d", i%3)
			putVersion(hc, tok, base, name, "to be purged")
			send(hc, tok, "DELETE", base+"/secrets/"+name+"?api-version=7.6", "")
			send(hc, tok, "DELETE", base+"/deletedsecrets/"+name+"?api-version=7.6", "")
			if b := send(hc, tok, "POST", base+"/secrets/crash-0-0/backup?api-version=7.6", ""); b != nil {
				send(hc, tok, "DELETE", base+"/secrets/crash-0-0?api-version=7.6", "")
				send(hc, tok, "DELETE", base+"/deletedsecrets/crash-0-0?api-version=7.6", "")
				send(hc, tok, "POST", base+"/secrets/restore?api-version=7.6", string(b))
			}
		})
		loop(func(i int) {
			what := "rotate-data-key"
			if i%3 == 2 {
				what = "rotate-root-key"
			}
			admin.Manage(ctx, "POST", "operator/"+what, nil, nil)
			time.Sleep(100 * time.Millisecond)
		})
		// Kill at a random moment once the load is under way.
		for deadline := time.Now().Add(time.Minute); ops.Load() < 50 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		d.kill()
		stop()
		wg.Wait()
		if ops.Load() < 50 {
			t.Fatalf("trial %d: only %d operations in a minute; the load did not run", trial, ops.Load())
		}
		// The restore loop deletes crash-0-0 and restores it: versions
		// acknowledged for it may be mid-restore at the kill. Only the
		// names the restore never touches are checked by version.
		mu.Lock()
		kept := acked[:0]
		for _, a := range acked {
			if a.name != "crash-0-0" {
				kept = append(kept, a)
			}
		}
		acked = kept
		mu.Unlock()

		out, err := exec.Command(binary, "operator", "verify", "--data-dir", dir, "--root-key-file", filepath.Join(dir, "root.key")).CombinedOutput()
		if err != nil {
			t.Fatalf("trial %d: operator verify after the kill: %v\n%s", trial, err, out)
		}
		t.Logf("trial %d: killed after %d operations; verify: %s", trial, ops.Load(), lastLine(out))
	}
	d := startDev(t, dir)
	hc, tok := vaultClient(t, d.Env)
	checkAcked(t, hc, tok, strings.TrimSuffix(d.Env.VaultURL, "/"), acked, "after the last trial")
	t.Logf("%d trials, %d acknowledged secret versions, all read back", trials, len(acked))
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// checkAcked reads every acknowledged version back.
func checkAcked(t *testing.T, hc *http.Client, tok, base string, acked []ackedWrite, when string) {
	t.Helper()
	for _, a := range acked {
		v, err := get(hc, tok, base+"/secrets/"+a.name+"/"+a.version+"?api-version=7.6")
		if err != nil || v != a.value {
			t.Fatalf("%s: acknowledged %s version %s = %q, %v; want %q", when, a.name, a.version, v, err, a.value)
		}
	}
}

// putVersion sets a secret and returns the version the server gave it.
func putVersion(hc *http.Client, tok, base, name, value string) (string, bool) {
	body := send(hc, tok, "PUT", base+"/secrets/"+name+"?api-version=7.6", fmt.Sprintf(`{"value":%q}`, value))
	var out struct{ ID string }
	if body == nil || json.Unmarshal(body, &out) != nil || out.ID == "" {
		return "", false
	}
	return out.ID[strings.LastIndexByte(out.ID, '/')+1:], true
}

// send makes one request and returns the body of a 2xx answer, else nil.
func send(hc *http.Client, tok, method, url, body string) []byte {
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return nil
	}
	return b
}
