package sdk

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// throttledCount is how many vault answers were 429.
func throttledCount(t *testing.T, env *testserver.Env) float64 {
	t.Helper()
	mfs, err := env.Server.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "coffer_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["api"] == "vault" && labels["code"] == "429" {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// A vault with static limits answers Key Vault's 429 Throttled with
// Retry-After, and the real azsecrets client waits and succeeds.
func TestStaticLimitsAndTheSDKsRetry(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	seed(t, env, "hot", "v")
	limits := "per-principal=10"
	var out mgmthttp.VaultOut
	manage(t, env, "PATCH", "vaults/demo", mgmthttp.UpdateVaultIn{Throttle: &limits}, &out)
	if out.Throttle.PerPrincipal != 10 {
		t.Fatalf("the vault's limits after the update: %+v", out.Throttle)
	}
	bad := "fast"
	if err := env.Client.Manage(context.Background(), "PATCH", "vaults/demo", mgmthttp.UpdateVaultIn{Throttle: &bad}, nil); err == nil || !strings.Contains(err.Error(), "keyvault, off") {
		t.Fatalf("a bad limit: %v", err)
	}

	// Raw: past the bucket, the answer is Key Vault's.
	tok := adminToken(t, env, env.Endpoints.Resource())
	var last *http.Response
	var e kvError
	for range 12 {
		if last, e = raw(t, env, "GET", "/secrets/hot?api-version=7.6", tok, ""); last.StatusCode == 429 {
			break
		}
	}
	secs, err := strconv.Atoi(last.Header.Get("Retry-After"))
	if last.StatusCode != 429 || e.Error.Code != "Throttled" || err != nil || secs < 1 || !strings.Contains(e.Error.Message, "10 requests per 10 seconds") {
		t.Fatalf("past the limit: %d %+v, Retry-After %q", last.StatusCode, e.Error, last.Header.Get("Retry-After"))
	}

	// The SDK: every call succeeds, some after waiting out a 429.
	before := throttledCount(t, env)
	client := secretsWith(t, env, env.Client.Cred)
	for i := range 14 {
		if _, err := client.GetSecret(context.Background(), "hot", "", nil); err != nil {
			t.Fatalf("azsecrets call %d: %v", i, err)
		}
	}
	if n := throttledCount(t, env) - before; n == 0 {
		t.Fatal("no call was throttled: the test did not exercise the SDK's retry")
	}

	off := "off"
	manage(t, env, "PATCH", "vaults/demo", mgmthttp.UpdateVaultIn{Throttle: &off}, nil)
	for range 30 {
		if resp, _ := raw(t, env, "GET", "/secrets/hot?api-version=7.6", tok, ""); resp.StatusCode != 200 {
			t.Fatalf("limits off, a read answered %d", resp.StatusCode)
		}
	}
}

// With the server full, overload protection refuses the principal that
// floods it and never the one that sends a steady trickle.
func TestOverloadProtectionShedsTheFlooderOnly(t *testing.T) {
	env := testserver.Start(t, testserver.Options{OverloadCapacity: 4})
	seed(t, env, "shared", "v")
	var flooder mgmthttp.SPOut
	manage(t, env, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: "flooder"}, &flooder)
	grantSecrets(t, env, flooder.ObjectID, "get")
	floodTok := spSecretToken(t, env, flooder.AppID, flooder.Password)
	steadyTok := adminToken(t, env, env.Endpoints.Resource())

	stop := make(chan struct{})
	var shed, served atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", strings.TrimSuffix(env.Admin.VaultURL, "/")+"/secrets/shared?api-version=7.6", nil)
				req.Header.Set("Authorization", "Bearer "+floodTok)
				resp, err := env.Client.HTTP.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case 429:
					shed.Add(1)
				case 200:
					served.Add(1)
				}
			}
		}()
	}
	// The steady caller: 50 reads a second, at least 100 of them, and for
	// as long as it takes the flood to be refused at all. How often it is
	// refused depends on the machine's load (the unit tests pin the
	// policy down); that the steady caller never is, does not.
	deadline := time.Now().Add(2 * time.Minute)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	steady := 0
	for shed.Load() < 1 || steady < 100 {
		<-tick.C
		if time.Now().After(deadline) {
			t.Fatalf("after 2 minutes the flood was refused %d times and served %d", shed.Load(), served.Load())
		}
		resp, e := raw(t, env, "GET", "/secrets/shared?api-version=7.6", steadyTok, "")
		if resp.StatusCode != 200 {
			t.Fatalf("the steady caller's read %d answered %d %+v during the flood", steady, resp.StatusCode, e.Error)
		}
		steady++
	}
	close(stop)
	wg.Wait()
	if got := env.Server.Limiter.Shed(); got < 1 {
		t.Fatalf("the limiter counts %d refusals", got)
	}
	t.Logf("steady: %d reads, no error; flood: %d served, %d refused", steady, served.Load(), shed.Load())
}

func spSecretToken(t *testing.T, env *testserver.Env, appID, secret string) string {
	t.Helper()
	status, body, _ := tokenFor(t, env, url.Values{"grant_type": {"client_credentials"}, "client_id": {appID},
		"client_secret": {secret}, "scope": {env.Endpoints.Resource() + "/.default"}})
	if status != 200 {
		t.Fatalf("token: %d %v", status, body)
	}
	return body["access_token"].(string)
}
