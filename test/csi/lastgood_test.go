package csi

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// wiClass is a class that mounts secret {{object}} with workload
// identity; extra lines go into its parameters.
const wiClass = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: {{class}}
spec:
  provider: azure
  parameters:
    clientID: "{{clientID}}"
    keyvaultName: demo
    tenantId: "{{tenant}}"
{{extra}}    objects: |
      array:
        - |
          objectName: {{object}}
          objectType: secret
`

// lastKnownGood: with the vault down, a new pod of the same identity and
// class gets the files last mounted here; a class without it fails as
// before, and so does another identity, and so does a class whose object
// was deleted since: a refusal drops what was stored.
func TestLastKnownGood(t *testing.T) {
	s := startStack(t, stackOptions{})
	ctx := context.Background()
	s.serviceAccount(t, "default", "default")
	s.serviceAccount(t, "default", "other")
	mi := s.workloadIdentity(t, "default", "default")
	setSecret(t, s.env, "secret1", "good value")
	setSecret(t, s.env, "doomed", "soon deleted")
	vars := map[string]string{"clientID": mi.ClientID, "tenant": s.env.State.TenantID, "object": "secret1"}
	vars["class"], vars["extra"] = "lkg", "    lastKnownGood: \"true\"\n"
	s.apply(t, fill(wiClass, vars))
	vars["class"], vars["object"] = "lkg-doomed", "doomed"
	s.apply(t, fill(wiClass, vars))
	vars["class"], vars["extra"], vars["object"] = "plain", "", "secret1"
	s.apply(t, fill(wiClass, vars))
	pod := func(name, class, sa string) string {
		m := fill(podWithVolume, map[string]string{"pod": name, "usesClass": class})
		return strings.Replace(m, "spec:\n", "spec:\n  serviceAccountName: "+sa+"\n", 1)
	}
	for _, p := range []string{pod("before", "lkg", "default"), pod("plain-before", "plain", "default"),
		pod("after", "lkg", "default"), pod("plain-after", "plain", "default"), pod("stranger", "lkg", "other"),
		pod("doomed-before", "lkg-doomed", "default"), pod("doomed-again", "lkg-doomed", "default"), pod("doomed-after", "lkg-doomed", "default")} {
		s.apply(t, p)
	}
	publish := func(name string) error {
		_, err := s.node.NodePublishVolume(ctx, s.publishRequest(t, s.pod(t, "default", name), "secrets"))
		return err
	}
	for _, p := range []string{"before", "plain-before", "doomed-before"} {
		if err := publish(p); err != nil {
			t.Fatalf("%s with the vault up: %v", p, err)
		}
	}
	sc, err := s.env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.DeleteSecret(ctx, "doomed", nil); err != nil {
		t.Fatal(err)
	}
	if err := publish("doomed-again"); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("a deleted object, vault up: %v", err)
	}

	s.env.Stop() // the vault and the authority are down from here on
	req := s.publishRequest(t, s.pod(t, "default", "after"), "secrets")
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("lastKnownGood with the vault down: %v", err)
	}
	if got := readFile(t, filepath.Join(req.TargetPath, "secret1")); got != "good value" {
		t.Fatalf("secret1 = %q", got)
	}
	if n := testutil.ToFloat64(metricVec(t, s.provider.Reg, "coffer_provider_last_known_good_mounts_total")); n != 1 {
		t.Fatalf("%v last-known-good mounts counted, want 1", n)
	}
	if err := publish("plain-after"); err == nil || !strings.Contains(err.Error(), "Unreachable") {
		t.Fatalf("a class without lastKnownGood, vault down: %v", err)
	}
	// Another service account is another identity: nothing stored for it.
	if err := publish("stranger"); err == nil || !strings.Contains(err.Error(), "Unreachable") {
		t.Fatalf("another identity, vault down: %v", err)
	}
	if err := publish("doomed-after"); err == nil || !strings.Contains(err.Error(), "Unreachable") {
		t.Fatalf("an object deleted before the outage, vault down: %v", err)
	}
}
