package csidriver

import (
	"log/slog"
	"testing"
	"time"
)

// A provider may push only the volumes it mounts: another provider's
// socket cannot make the driver refresh them. Duplicate pushes of a
// queued volume are merged.
func TestPushesOnlyFromTheVolumesProvider(t *testing.T) {
	d, err := New(Config{NodeID: "n", ProviderDirs: []string{t.TempDir()}, RotationEnabled: true, RotationInterval: time.Hour, Push: true,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	const target = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/secrets/mount"
	d.volumes[target] = &volume{req: &publication{target: target}, provider: "coffer"}
	d.pushed("rogue", target)
	if len(d.pushes) != 0 {
		t.Fatal("another provider's push was queued")
	}
	d.pushed("coffer", target)
	d.pushed("coffer", target)
	if len(d.pushes) != 1 {
		t.Fatalf("%d pushes queued, want the volume's own provider's, once", len(d.pushes))
	}
}
