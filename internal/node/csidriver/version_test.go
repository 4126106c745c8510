package csidriver

import (
	"context"
	"testing"

	"github.com/cofferhq/coffer/internal/version"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestPluginInfoIsTheRelease checks that the driver reports the one release
// version (internal/version), not a copy of its own.
func TestPluginInfoIsTheRelease(t *testing.T) {
	defer func(v string) { version.Version = v }(version.Version)
	version.Version = "v9.8.7-test"
	d, err := New(Config{Settings: Settings{NodeID: "n", ProviderDirs: []string{t.TempDir()}}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := identity{d: d}.GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
	if err != nil || resp.VendorVersion != "v9.8.7-test" || resp.Name != Name {
		t.Fatalf("GetPluginInfo = %+v, %v", resp, err)
	}
}
