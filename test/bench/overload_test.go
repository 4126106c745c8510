package bench

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// BenchmarkOverloadFairness measures one principal's steady 50 reads a
// second while another floods the same server with 32 clients: its p99
// unloaded, under the flood with overload protection (the default), and
// under the flood without it. The bound: no error, and the p99
// within 3x the unloaded one, with protection.
func BenchmarkOverloadFairness(b *testing.B) {
	for _, tc := range []struct {
		name     string
		capacity int
		flood    bool
	}{{"unloaded", 0, false}, {"flood-protected", 0, true}, {"flood-unprotected", -1, true}} {
		b.Run(tc.name, func(b *testing.B) {
			env := testserver.Start(b, testserver.Options{OverloadCapacity: tc.capacity})
			admin := token(b, env)
			var sp mgmthttp.SPOut
			if err := env.Client.Manage(b.Context(), "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: "flooder"}, &sp); err != nil {
				b.Fatal(err)
			}
			get := []string{"get"}
			if err := env.Client.Manage(b.Context(), "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &get}, nil); err != nil {
				b.Fatal(err)
			}
			floodTok := spToken(b, env, sp.AppID, sp.Password)
			conns := dialAll(b, env.Admin.VaultURL, env.Admin.CAFile)
			if status, err := conns[0].Do("PUT", getPath, admin, []byte(`{"value":"`+strings.Repeat("v", 64)+`"}`)); err != nil || status != 200 {
				b.Fatalf("PUT: %d %v", status, err)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			if tc.flood {
				for _, c := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							select {
							case <-stop:
								return
							default:
							}
							c.Do("GET", getPath, floodTok, nil)
						}
					}()
				}
			}
			steady := dialAll(b, env.Admin.VaultURL, env.Admin.CAFile)[0]
			var lat []time.Duration
			errors := 0
			tick := time.NewTicker(20 * time.Millisecond)
			b.ResetTimer()
			for range b.N {
				<-tick.C
				t0 := time.Now()
				status, err := steady.Do("GET", getPath, admin, nil)
				lat = append(lat, time.Since(t0))
				if err != nil || status != 200 {
					errors++
				}
			}
			b.StopTimer()
			tick.Stop()
			close(stop)
			wg.Wait()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(errors), "errors")
			b.ReportMetric(float64(env.Server.Limiter.Shed()), "shed")
		})
	}
}

func spToken(b *testing.B, env *testserver.Env, appID, secret string) string {
	creds := env.Admin
	creds.ClientID, creds.ClientSecret = appID, secret
	cl, err := client.New(creds)
	if err != nil {
		b.Fatal(err)
	}
	tok, err := cl.Token(b.Context(), env.Endpoints.Resource())
	if err != nil {
		b.Fatal(err)
	}
	return tok
}
