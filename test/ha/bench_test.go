package ha

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/hatest"
)

// BenchmarkHeldReadWakeAcrossReplicas measures, on a 3-member etcd with
// two replicas, the time from a write on one replica to
// the answer of a read held on the other, counted from the write's
// request (the bound: 100 ms p99).
func BenchmarkHeldReadWakeAcrossReplicas(b *testing.B) {
	ha := hatest.Start(b, etcdtest.Start(b, 3), 2, hatest.Options{})
	ctx := context.Background()
	a := secretsB(b, ha)
	if _, err := a.SetSecret(ctx, "pushed", azsecrets.SetSecretParameters{Value: to.Ptr("v0")}, nil); err != nil {
		b.Fatal(err)
	}
	tok, err := ha.Client(0).Token(ctx, ha.Endpoints.Resource())
	if err != nil {
		b.Fatal(err)
	}
	hc := ha.HTTP(1)
	var waits []time.Duration
	b.ResetTimer()
	for i := range b.N {
		etag := etagOfB(b, hc, ha, tok)
		answered := make(chan time.Time, 1)
		go func() {
			req, _ := http.NewRequest("GET", ha.Endpoints.VaultURL("demo")+"/secrets/pushed?api-version=7.6", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("If-None-Match", etag)
			req.Header.Set("Prefer", "wait=25")
			resp, err := hc.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			answered <- time.Now()
		}()
		for ha.Replicas[1].Changes().Watching() == 0 {
			time.Sleep(time.Millisecond)
		}
		// From the write's request, not its answer: the other replica's
		// watch often delivers before the writer's own answer is back, so
		// this includes the commit and is an upper bound.
		sent := time.Now()
		if _, err := a.SetSecret(ctx, "pushed", azsecrets.SetSecretParameters{Value: to.Ptr(fmt.Sprint("v", i+1))}, nil); err != nil {
			b.Fatal(err)
		}
		waits = append(waits, (<-answered).Sub(sent))
	}
	b.StopTimer()
	slices.Sort(waits)
	b.ReportMetric(float64(waits[len(waits)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(waits[len(waits)*99/100].Microseconds())/1000, "p99-ms")
}

func secretsB(b *testing.B, ha *hatest.Cluster) *azsecrets.Client {
	s, err := ha.Client(0).Secrets("demo")
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func etagOfB(b *testing.B, hc *http.Client, ha *hatest.Cluster, tok string) string {
	req, _ := http.NewRequest("GET", ha.Endpoints.VaultURL("demo")+"/secrets/pushed?api-version=7.6", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	return resp.Header.Get("ETag")
}
