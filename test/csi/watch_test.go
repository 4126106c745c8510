package csi

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// vaultRequests counts, on the server, the requests of the vault API it
// answered (held reads and vault watches are counted apart, as
// vault-held and vault-watch).
func vaultRequests(t testing.TB, env *testserver.Env) float64 {
	t.Helper()
	mfs, err := env.Server.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "coffer_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "api" && l.GetValue() == "vault" {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// mountsOK counts the provider's successful mounts.
func (p *runningProvider) mountsOK(t testing.TB) float64 {
	t.Helper()
	return testutil.ToFloat64(metricVec(t, p.Reg, "coffer_provider_mounts_total", "ok"))
}

// While the vault watch is healthy, rotation costs the vault nothing for
// the objects it covers: two volumes of one identity, two secrets each,
// rotated every half second, send no vault request, counted on the
// server, over ten rotations of each. A server without the watch gets a
// conditional read per object per rotation instead (held reads), which
// shows that the count is of something.
func TestWatchedRotationSendsNoVaultRequests(t *testing.T) {
	tests := map[string]struct {
		noVaultWatch bool
		want         func(float64) bool
		what         string
	}{
		"vault watch": {want: func(n float64) bool { return n == 0 }, what: "none"},
		"held reads":  {noVaultWatch: true, want: func(n float64) bool { return n >= 20 }, what: "one per object per rotation"},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			s := startStack(t, stackOptions{rotation: 500 * time.Millisecond, push: true, noVaultWatch: test.noVaultWatch})
			setSecret(t, s.env, "one", "1")
			setSecret(t, s.env, "two", "2")
			s.spClass(t, "zero", []string{"objectName: one\nobjectType: secret", "objectName: two\nobjectType: secret"}, "zero-a", "zero-b")
			var reqs []*csi.NodePublishVolumeRequest
			for _, pod := range []string{"zero-a", "zero-b"} {
				req := s.publishRequest(t, s.pod(t, "default", pod), "secrets")
				if _, err := s.node.NodePublishVolume(context.Background(), req); err != nil {
					t.Fatal(err)
				}
				reqs = append(reqs, req)
			}
			s.waitWatched(t, 2, "after the mounts")
			if !test.noVaultWatch {
				eventually(t, "a rotation answered from the vault watch", func() bool {
					return testutil.ToFloat64(metricVec(t, s.provider.Reg, "coffer_provider_watched_reads_total", "secret")) >= 4
				})
			}
			before, mounts := vaultRequests(t, s.env), s.provider.mountsOK(t)
			eventually(t, "ten rotations of each volume", func() bool { return s.provider.mountsOK(t)-mounts >= 20 })
			sent := vaultRequests(t, s.env) - before
			t.Logf("%.0f mounts sent %.0f vault requests", s.provider.mountsOK(t)-mounts, sent)
			if !test.want(sent) {
				t.Fatalf("%.0f rotations sent %.0f vault requests, want %s", s.provider.mountsOK(t)-mounts, sent, test.what)
			}
			// The watch still pushes changes, and the files are right.
			setSecret(t, s.env, "two", "2, changed")
			for _, req := range reqs {
				waitFile(t, filepath.Join(req.TargetPath, "two"), "2, changed", 20*time.Second, "the change did not reach "+req.TargetPath)
			}
		})
	}
}

// A volume whose identity loses access while the vault watch vouches for
// its objects is not served from the cache: the vault drops the object
// from the watch, the volume is refreshed at once and told why it cannot
// be, and a value written after the revocation never reaches it.
func TestWatchedVolumeLosesAccess(t *testing.T) {
	s := startStack(t, stackOptions{rotation: 500 * time.Millisecond, push: true})
	setSecret(t, s.env, "kept", "before")
	sp := s.spClass(t, "revoked", []string{"objectName: kept\nobjectType: secret"}, "revoked")
	req := s.publishRequest(t, s.pod(t, "default", "revoked"), "secrets")
	if _, err := s.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	s.waitWatched(t, 1, "after the mount")
	eventually(t, "a rotation answered from the vault watch", func() bool {
		return testutil.ToFloat64(metricVec(t, s.provider.Reg, "coffer_provider_watched_reads_total", "secret")) >= 1
	})
	get := []string{"get"}
	if err := s.env.Client.Manage(context.Background(), "POST", "vaults/demo/delete-policy", mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &get}, nil); err != nil {
		t.Fatal(err)
	}
	setSecret(t, s.env, "kept", "after the revocation")
	msg := s.waitEvent(t, "default", "revoked", "MountRotationFailed")
	if !strings.Contains(msg, "not readable") {
		t.Fatalf("the refresh failed with %q, want the refusal", msg)
	}
	// Rotations go on failing, and the old files stay.
	mounts := testutil.ToFloat64(metricVec(t, s.provider.Reg, "coffer_provider_mounts_total", "Forbidden"))
	eventually(t, "more refused rotations", func() bool {
		return testutil.ToFloat64(metricVec(t, s.provider.Reg, "coffer_provider_mounts_total", "Forbidden")) >= mounts+3
	})
	if got := readFile(t, filepath.Join(req.TargetPath, "kept")); got != "before" {
		t.Fatalf("the volume holds %q after its identity lost access", got)
	}
}
