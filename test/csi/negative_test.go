package csi

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podWithVolume is a pod whose volume "secrets" uses class {{usesClass}}.
const podWithVolume = `apiVersion: v1
kind: Pod
metadata:
  name: {{pod}}
spec:
  containers:
  - name: app
    image: app
  volumes:
  - name: secrets
    csi:
      driver: secrets-store.csi.k8s.io
      readOnly: true
      volumeAttributes:
        secretProviderClass: {{usesClass}}
`

// classAndPod is a class for vault {{vault}} and a pod using it with the
// service principal in Secret creds.
const classAndPod = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: {{class}}
spec:
  provider: azure
  parameters:
    keyvaultName: "{{vault}}"
    tenantId: "{{tenant}}"
    objects: |
{{objects}}
---
` + podWithVolume + `      nodePublishSecretRef:
        name: creds
`

func indent(s, by string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = by + lines[i]
	}
	return strings.Join(lines, "\n")
}

// Every failure of a first mount is a clear error and an event on the pod,
// and leaves no tmpfs behind; a failed republish keeps the old files.
func TestMountFailures(t *testing.T) {
	s := startStack(t, stackOptions{rotation: time.Millisecond, maxRecv: 64 << 10})
	ctx := context.Background()
	for _, ns := range []string{"default", "other"} {
		if ns != "default" {
			s.apply(t, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+ns+"\n")
		}
		s.serviceAccount(t, ns, "default")
	}
	reader := servicePrincipal(t, s.env, "reader", []string{"get"}, nil, nil)
	nobody := servicePrincipal(t, s.env, "nobody", []string{}, nil, nil)
	setSecret(t, s.env, "present", "pr3sent-s3cret-v4lue")
	setSecret(t, s.env, "big", strings.Repeat("b", 24<<10))
	for _, c := range []struct{ ns, id, secret string }{{"default", reader.AppID, reader.Password}, {"other", reader.AppID, reader.Password}} {
		if err := s.kube.Client.Create(ctx, &corev1.Secret{ObjectMeta: objectMeta(c.ns, "creds"), StringData: map[string]string{"clientid": c.id, "clientsecret": c.secret}}); err != nil {
			t.Fatal(err)
		}
	}
	one := func(name string) string { return objects("objectName: " + name + "\nobjectType: secret") }
	cases := []struct {
		name, ns, class, usesClass, objects, reason, mentions string
		creds                                                 map[string]string
		code                                                  codes.Code
	}{
		{name: "missing class", usesClass: "no-such-class", reason: "SecretProviderClassNotFound", mentions: "no-such-class"},
		{name: "class in another namespace", ns: "other", usesClass: "shared-class", reason: "SecretProviderClassNotFound", mentions: "other/shared-class"},
		{name: "alias escaping the volume", objects: objects("objectName: present\nobjectType: secret\nobjectAlias: ../../etc/passwd"), reason: "InvalidParameter", mentions: ".."},
		{name: "missing object", objects: one("absent"), reason: "NotFound", mentions: "secret absent"},
		{name: "denied identity", objects: one("present"), creds: map[string]string{"clientid": nobody.AppID, "clientsecret": nobody.Password}, reason: "Forbidden", mentions: nobody.AppID},
		{name: "malformed objects YAML", objects: "array: [not closed", reason: "InvalidParameter", mentions: "objects"},
		{name: "oversized response", objects: objects("objectName: big\nobjectType: secret", "objectName: big\nobjectType: secret\nobjectAlias: big2", "objectName: big\nobjectType: secret\nobjectAlias: big3"), reason: "GRPCProviderError", mentions: "max-call-recv-msg-size"},
	}
	// The class "shared-class" exists in default only.
	s.apply(t, fill(classAndPod, map[string]string{"class": "shared-class", "usesClass": "shared-class", "pod": "owner", "vault": "demo", "tenant": s.env.State.TenantID, "objects": indent(one("present"), "      ")}))
	for i, c := range cases {
		if c.ns == "" {
			c.ns = "default"
		}
		class := "class-" + string(rune('a'+i))
		if c.usesClass == "" {
			c.usesClass = class
		}
		podName := "pod-" + string(rune('a'+i))
		vars := map[string]string{"class": class, "usesClass": c.usesClass, "pod": podName, "vault": "demo", "tenant": s.env.State.TenantID, "objects": indent(c.objects, "      ")}
		manifest := fill(classAndPod, vars)
		if c.objects == "" {
			manifest = manifest[strings.Index(manifest, "---\n")+4:] // the pod alone
		}
		s.applyIn(t, c.ns, manifest)
		req := s.publishRequest(t, s.pod(t, c.ns, podName), "secrets")
		if c.creds != nil {
			req.Secrets = c.creds
		}
		_, err := s.node.NodePublishVolume(ctx, req)
		if err == nil {
			t.Errorf("%s: the mount succeeded", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.mentions) {
			t.Errorf("%s: the error %q does not mention %q", c.name, err, c.mentions)
		}
		if status.Code(err) == codes.Unknown || status.Code(err) == codes.OK {
			t.Errorf("%s: no gRPC status code: %v", c.name, err)
		}
		if isMounted(req.TargetPath) {
			t.Errorf("%s: a tmpfs is left at the target", c.name)
		}
		ev := s.waitEvent(t, c.ns, podName, c.reason)
		if !strings.HasPrefix(ev, "Warning ") || !strings.Contains(ev, c.usesClass) {
			t.Errorf("%s: event %q", c.name, ev)
		}
		// Neither the client secret sent nor the service-account token may
		// appear in what the pod's owner sees.
		for _, secret := range []string{req.Secrets["clientsecret"], saToken(t, req), "pr3sent-s3cret-v4lue"} {
			if secret != "" && (strings.Contains(ev, secret) || strings.Contains(err.Error(), secret)) {
				t.Errorf("%s: a credential or value leaked into the error or event", c.name)
			}
		}
	}

	// A republish that fails keeps the old files, and says so in an event.
	s.apply(t, fill(classAndPod, map[string]string{"class": "flaky", "usesClass": "flaky", "pod": "steady", "vault": "demo", "tenant": s.env.State.TenantID, "objects": indent(one("present"), "      ")}))
	req := s.publishRequest(t, s.pod(t, "default", "steady"), "secrets")
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	// The vault (and its authority) go down.
	s.env.Stop()
	s.apply(t, fill(classAndPod, map[string]string{"class": "late", "usesClass": "late", "pod": "late", "vault": "demo", "tenant": s.env.State.TenantID, "objects": indent(one("present"), "      ")}))
	late := s.publishRequest(t, s.pod(t, "default", "late"), "secrets")
	if _, err := s.node.NodePublishVolume(ctx, late); err == nil || !strings.Contains(err.Error(), "unreachable") || isMounted(late.TargetPath) {
		t.Fatalf("a first mount with the vault down: %v (mounted: %v)", err, isMounted(late.TargetPath))
	}
	s.waitEvent(t, "default", "late", "Unreachable")
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("a failed republish must not fail the volume: %v", err)
	}
	if !isMounted(req.TargetPath) || readFile(t, filepath.Join(req.TargetPath, "present")) != "pr3sent-s3cret-v4lue" {
		t.Fatal("the old files are gone after a failed republish")
	}
	if ev := s.waitEvent(t, "default", "steady", "MountRotationFailed"); !strings.Contains(ev, "old files stay") {
		t.Fatalf("event %q", ev)
	}
	if entries, _ := os.ReadDir(req.TargetPath); len(entries) != 3 { // ..data, the generation, present
		t.Fatalf("%d entries after a failed republish", len(entries))
	}
	if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}
}

func objectMeta(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name}
}

// saToken is the service-account token a publish request carries.
func saToken(t *testing.T, req *csi.NodePublishVolumeRequest) string {
	var tokens map[string]struct{ Token string }
	json.Unmarshal([]byte(req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"]), &tokens)
	for _, v := range tokens {
		return v.Token
	}
	t.Fatal("the request carries no service-account token")
	return ""
}
