package csi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/mount-utils"
)

// BenchmarkNodePublish measures NodePublishVolume end to end, as kubelet
// sees it, for a class of 1 and of 10 secrets: the SecretProviderClass read
// from the real apiserver, the tmpfs mount, the provider call (token cached,
// objects read in parallel with conditional requests), the atomic write and
// the status object write. Each iteration publishes a fresh volume and
// unpublishes it untimed.
//
// BenchmarkNodePublish/republish-unchanged-10 measures a kubelet republish
// of a mounted volume whose objects did not change, and reports the vault
// requests and the value transfers it cost.
func BenchmarkNodePublish(b *testing.B) {
	// The driver's own rotation loop off: only the benchmark's republishes
	// may read the vault.
	s := startStack(b, stackOptions{rotation: time.Nanosecond, rotationTick: -1})
	ctx := context.Background()
	s.serviceAccount(b, "default", "default")
	sp := servicePrincipal(b, s.env, "bench", []string{"get"}, nil, nil)
	var objs []string
	for i := range 10 {
		setSecret(b, s.env, fmt.Sprintf("s%d", i), strings.Repeat("x", 64))
		objs = append(objs, fmt.Sprintf("objectName: s%d\nobjectType: secret", i))
	}
	manifest := func(n int) string {
		return fill(classAndPod, map[string]string{"class": fmt.Sprintf("bench-%d", n), "usesClass": fmt.Sprintf("bench-%d", n),
			"pod": fmt.Sprintf("bench-%d", n), "vault": "demo", "tenant": s.env.State.TenantID, "objects": indent(objects(objs[:n]...), "      ")})
	}
	if err := s.kube.Client.Create(ctx, &corev1.Secret{ObjectMeta: objectMeta("default", "creds"), StringData: map[string]string{"clientid": sp.AppID, "clientsecret": sp.Password}}); err != nil {
		b.Fatal(err)
	}
	// The floor this machine sets: creating a target directory, mounting a
	// tmpfs there and unmounting it, with nothing else.
	b.Run("floor-mount-only", func(b *testing.B) {
		m := mount.New("")
		lat := make([]time.Duration, 0, b.N)
		for i := range b.N {
			dir := filepath.Join(s.root, "floor", fmt.Sprint(i))
			t0 := time.Now()
			if err := os.MkdirAll(dir, 0o750); err != nil {
				b.Fatal(err)
			}
			if err := m.Mount("tmpfs", dir, "tmpfs", nil); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
			b.StopTimer()
			mount.CleanupMountPoint(dir, m, false)
			b.StartTimer()
		}
		report(b, lat)
	})
	for _, n := range []int{1, 10} {
		s.apply(b, manifest(n))
		base := s.publishRequest(b, s.pod(b, "default", fmt.Sprintf("bench-%d", n)), "secrets")
		b.Run(fmt.Sprintf("objects=%d", n), func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for i := range b.N {
				req := proto.Clone(base).(*csi.NodePublishVolumeRequest)
				req.TargetPath = filepath.Join(s.root, "bench", fmt.Sprint(n), fmt.Sprint(i), "mount")
				t0 := time.Now()
				if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				b.StopTimer()
				if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			report(b, lat)
		})
		if n != 10 {
			continue
		}
		b.Run("republish-unchanged-10", func(b *testing.B) {
			if _, err := s.node.NodePublishVolume(ctx, base); err != nil {
				b.Fatal(err)
			}
			fetched, notModified := s.provider.vaultRequests(b, "fetched"), s.provider.vaultRequests(b, "not_modified")
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if _, err := s.node.NodePublishVolume(ctx, base); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			report(b, lat)
			b.ReportMetric((s.provider.vaultRequests(b, "fetched")-fetched)/float64(b.N), "value-transfers/op")
			b.ReportMetric((s.provider.vaultRequests(b, "not_modified")-notModified)/float64(b.N), "conditional-reads/op")
		})
	}
}

func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkPushRotation measures push rotation: from the vault
// acknowledging a new version of a mounted secret to the new value in the
// mounted file, with a rotation interval of an hour, so only a push can
// bring it. Polling's figure for comparison is half the interval on
// average (a minute with the default two). It also reports the vault's
// answers per change, from its audit log: those that carried the value,
// and the conditional reads answered 304.
func BenchmarkPushRotation(b *testing.B) {
	s := pushStack(b, "push")
	req := s.publishRequest(b, s.pod(b, "default", "push"), "secrets")
	if _, err := s.node.NodePublishVolume(context.Background(), req); err != nil {
		b.Fatal(err)
	}
	s.waitWatched(b, 1, "after the mount")
	file := filepath.Join(req.TargetPath, "pushed")
	lat := make([]time.Duration, 0, b.N)
	before := auditedReads(b, s.env, "secrets/pushed")
	b.ResetTimer()
	for i := range b.N {
		value := fmt.Sprintf("v%d", i+1)
		setSecret(b, s.env, "pushed", value)
		t0 := time.Now() // from the acknowledgement
		waitFile(b, file, value, 30*time.Second, fmt.Sprintf("change %d did not arrive", i+1))
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	report(b, lat)
	after := auditedReads(b, s.env, "secrets/pushed")
	b.ReportMetric(float64(after.transfers-before.transfers)/float64(b.N), "value-transfers/op")
	b.ReportMetric(float64(after.conditional-before.conditional)/float64(b.N), "conditional-reads/op")
}
