package nodeagent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
)

// TestPodFlood floods the node agent from one pod (32 clients on
// keep-alive connections from its address, for about 5 seconds) while
// another pod asks for its token now and then. The flooder is held to its
// limit with 429 too_many_requests and Retry-After; the other pod gets
// every token it asks for. The latencies are logged, not asserted: the
// machine is shared.
func TestPodFlood(t *testing.T) {
	w := start(t)
	agent := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{Quiet: true})
	agenttest.Namespace(t, w.kube, "team-a")
	w.bind(t, "team-a", "web-identity", w.node.Bound.ClientID, "", "web", nil)
	flooder := agenttest.RunningPod(t, w.kube, "team-a", "flooder", "node-1", "127.0.0.2", map[string]string{podidentity.BindingLabel: "web"})
	victim := agenttest.RunningPod(t, w.kube, "team-a", "victim", "node-1", "127.0.0.3", map[string]string{podidentity.BindingLabel: "web"})
	cached(t, agent, []*corev1.Pod{flooder, victim}, "web-identity-binding")
	q := agent.URL + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + url.QueryEscape(vaultResource(w))
	client := func(from string, conns int) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 30 * time.Second}
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: conns}}
	}
	ask := func(hc *http.Client, tok string) (int, string, error) {
		req, _ := http.NewRequest("GET", q, nil)
		req.Header.Set("Metadata", "true")
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After"), nil
	}
	floodTok, victimTok := agenttest.PodToken(t, w.kube, flooder), agenttest.PodToken(t, w.kube, victim)
	victimHC := client("127.0.0.3", 1)
	var quiet []time.Duration
	for range 50 {
		start := time.Now()
		if code, _, err := ask(victimHC, victimTok); err != nil || code != 200 {
			t.Fatalf("the other pod before the flood: %d %v", code, err)
		}
		quiet = append(quiet, time.Since(start))
	}

	var served, refused, failed atomic.Int64
	var badRetry atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	floodHC := client("127.0.0.2", 32)
	floodStart := time.Now()
	const maxFlood = 200000 // bounded in count as well as in time
	var sent atomic.Int64
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= maxFlood {
				select {
				case <-stop:
					return
				default:
				}
				code, retry, err := ask(floodHC, floodTok)
				switch {
				case err != nil:
					failed.Add(1)
				case code == 200:
					served.Add(1)
				case code == 429:
					refused.Add(1)
					if retry == "" {
						badRetry.Store("429 without Retry-After")
					}
				default:
					badRetry.Store(fmt.Sprintf("status %d", code))
				}
			}
		}()
	}
	// The other pod, during the flood: every request is answered.
	var flooded []time.Duration
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) || len(flooded) < 20; {
		start := time.Now()
		code, _, err := ask(victimHC, victimTok)
		if err != nil || code != 200 {
			t.Errorf("the other pod during the flood: %d %v", code, err)
			break
		}
		flooded = append(flooded, time.Since(start))
		time.Sleep(50 * time.Millisecond) // a pod asking now and then
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(floodStart)
	p99 := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[min(len(ds)-1, len(ds)*99/100)]
	}
	t.Logf("flooding pod: %d served, %d refused (429), %d failed in %s (%.0f requests a second); the other pod: %d tokens, p99 %s (quiet p99 %s)",
		served.Load(), refused.Load(), failed.Load(), elapsed.Round(time.Millisecond), float64(served.Load()+refused.Load())/elapsed.Seconds(), len(flooded), p99(flooded), p99(quiet))
	if v := badRetry.Load(); v != nil {
		t.Errorf("the flooder got %v", v)
	}
	if failed.Load() > 0 {
		t.Errorf("%d of the flooder's requests failed outright, rather than being refused", failed.Load())
	}
	// The budget: a burst, then the rate. The flood is refused past it.
	if most := int64(nodeagent.DefaultPodBurst + nodeagent.DefaultPodRate*(elapsed.Seconds()+1)); served.Load() > most || refused.Load() == 0 {
		t.Errorf("the flooder was served %d and refused %d, want at most %d served", served.Load(), refused.Load(), most)
	}
}
