package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

// vaultClient returns an HTTP client and a token for the dev server's vault.
func vaultClient(t *testing.T, env devenv.Env) (*http.Client, string) {
	t.Helper()
	c, err := client.New(env)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(context.Background(), strings.TrimSuffix(env.AuthorityHost, "/"))
	if err != nil {
		t.Fatal(err)
	}
	hc := *c.HTTP
	hc.Timeout = 10 * time.Second
	return &hc, tok
}

func put(hc *http.Client, tok, url, value string) error {
	body, _ := json.Marshal(map[string]string{"value": value})
	req, _ := http.NewRequest("PUT", url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("PUT: %s", resp.Status)
	}
	return nil
}

func get(hc *http.Client, tok, url string) (string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var s struct{ Value string }
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %s %v", url, resp.Status, err)
	}
	return s.Value, nil
}

// Every write the server acknowledged before a kill -9 must read back after
// a restart, and the store file must hold none of the values in plaintext.
func TestAcknowledgedWritesSurviveKill9(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	hc, tok := vaultClient(t, d.Env)
	base := strings.TrimSuffix(d.Env.VaultURL, "/")

	marker := make([]byte, 8)
	rand.Read(marker)
	prefix := "plain-" + hex.EncodeToString(marker) // values must never appear in the file
	var mu sync.Mutex
	acked := map[string]string{}
	var writes atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("dur-%d-%d", w, i%5) // several versions per name
				value := fmt.Sprintf("%s-%d-%d", prefix, w, i)
				if err := put(hc, tok, base+"/secrets/"+name+"?api-version=7.6", value); err != nil {
					continue // not acknowledged: may or may not have landed
				}
				mu.Lock()
				acked[name] = value // the latest acknowledged version of name
				mu.Unlock()
				writes.Add(1)
			}
		}()
	}
	// Kill once every worker has written and the burst is under way (not
	// after a fixed time, which a busy machine may spend on handshakes).
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		names := len(acked)
		mu.Unlock()
		if names >= 32 && writes.Load() >= 300 {
			break
		}
		if time.Now().After(deadline) {
			break // reported below
		}
	}
	d.kill() // SIGKILL in the middle of the burst
	stop()
	wg.Wait()
	if len(acked) < 32 || writes.Load() < 300 {
		t.Fatalf("only %d names and %d writes acknowledged in a minute; the burst did not run", len(acked), writes.Load())
	}

	d2 := startDev(t, dir)
	hc2, tok2 := vaultClient(t, d2.Env)
	base2 := strings.TrimSuffix(d2.Env.VaultURL, "/")
	for name, want := range acked {
		got, err := get(hc2, tok2, base2+"/secrets/"+name+"?api-version=7.6")
		if err != nil {
			t.Fatalf("acknowledged secret %s lost: %v", name, err)
		}
		// A later, unacknowledged write may have landed too; it must be one
		// of this writer's values, never an older one.
		if got != want && !laterThan(got, want) {
			t.Fatalf("%s = %q after restart, but %q was acknowledged", name, got, want)
		}
	}
	d2.stop(t)
	data, err := os.ReadFile(filepath.Join(dir, server.StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(prefix)) {
		t.Fatal("the store file holds a plaintext secret value")
	}
	t.Logf("%d names verified after kill -9", len(acked))
}

// laterThan reports whether value a was written after b: values are
// "{prefix}-{worker}-{sequence}" and a name is only written by one worker.
func laterThan(a, b string) bool {
	seq := func(v string) int {
		n := -1
		fmt.Sscanf(v[strings.LastIndex(v, "-")+1:], "%d", &n)
		return n
	}
	return seq(a) > seq(b)
}
