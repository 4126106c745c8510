package provider

import (
	"context"
	"testing"

	"github.com/cofferhq/coffer/internal/version"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"
)

// TestVersionIsTheRelease checks that the provider reports the one release
// version (internal/version), not a copy of its own.
func TestVersionIsTheRelease(t *testing.T) {
	defer func(v string) { version.Version = v }(version.Version)
	version.Version = "v9.8.7-test"
	s := &Server{cfg: Config{Name: "coffer"}}
	resp, err := s.Version(context.Background(), &v1alpha1.VersionRequest{})
	if err != nil || resp.RuntimeVersion != "v9.8.7-test" || resp.RuntimeName != "coffer" || resp.Version != "v1alpha1" {
		t.Fatalf("Version = %+v, %v", resp, err)
	}
}
