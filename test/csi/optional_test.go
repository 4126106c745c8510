package csi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An object marked optional (Coffer's field; the Azure provider ignores
// it) that does not exist is left out of the volume, and appears at a
// rotation once it is created. A volume of nothing but missing optional
// objects still fails, and says why.
func TestOptionalObjects(t *testing.T) {
	s := startStack(t, stackOptions{rotation: 200 * time.Millisecond})
	setSecret(t, s.env, "here", "present")
	s.spClass(t, "partly", []string{"objectName: here\nobjectType: secret", "objectName: later\nobjectType: secret\noptional: true"}, "partly")
	req := s.publishRequest(t, s.pod(t, "default", "partly"), "secrets")
	if _, err := s.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatalf("a missing optional object failed the mount: %v", err)
	}
	if got := readFile(t, filepath.Join(req.TargetPath, "here")); got != "present" {
		t.Fatalf("here = %q", got)
	}
	if _, err := os.Stat(filepath.Join(req.TargetPath, "later")); !os.IsNotExist(err) {
		t.Fatalf("a file for the missing optional object: %v", err)
	}
	setSecret(t, s.env, "later", "created")
	waitFile(t, filepath.Join(req.TargetPath, "later"), "created", 20*time.Second, "the optional object, once created, did not appear")

	s.apply(t, fill(classAndPod, map[string]string{"class": "nothing", "usesClass": "nothing", "pod": "nothing", "vault": "demo",
		"tenant": s.env.State.TenantID, "objects": indent(objects("objectName: never\nobjectType: secret\noptional: true"), "      ")}))
	req2 := s.publishRequest(t, s.pod(t, "default", "nothing"), "secrets")
	if _, err := s.node.NodePublishVolume(context.Background(), req2); err == nil || !strings.Contains(err.Error(), "every object of the volume is optional") || isMounted(req2.TargetPath) {
		t.Fatalf("a volume of missing optional objects: %v", err)
	}
}
