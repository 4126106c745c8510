//go:build !node

package cli

import (
	"bytes"
	"strings"
	"testing"
)

// coffer migrate flexvolume writes the manifests on stdout and one
// NOT MAPPED line per field on stderr, and exits 0; without -f it is a
// usage error.
func TestMigrateFlexVolume(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Main([]string{"migrate", "flexvolume", "-f", "migrate/flexvol/testdata/sp-pod.yaml"}, strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "kind: SecretProviderClass") || !strings.Contains(stdout.String(), "driver: secrets-store.csi.k8s.io") {
		t.Errorf("stdout:\n%s", stdout.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NOT MAPPED: Pod nginx-flex-kv: spec.volumes[test].flexVolume.options.resourcegroup: ") {
		t.Errorf("stderr:\n%s", stderr.String())
	}

	// From stdin.
	stdout.Reset()
	stderr.Reset()
	in := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: busybox}]\n  volumes:\n  - name: kv\n    flexVolume:\n      driver: azure/kv\n      options: {usepodidentity: \"true\", keyvaultname: kv1, keyvaultobjectnames: a, keyvaultobjecttypes: secret, tenantid: t, mystery: x}\n"
	if code := Main([]string{"migrate", "flexvolume", "-f", "-"}, strings.NewReader(in), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if got := strings.TrimSpace(stderr.String()); got != "NOT MAPPED: Pod p: spec.volumes[kv].flexVolume.options.mystery: unknown option, not mapped: set its equivalent in the SecretProviderClass p-kv by hand, if it has one" {
		t.Errorf("stderr: %s", got)
	}

	stderr.Reset()
	if code := Main([]string{"migrate", "flexvolume"}, strings.NewReader(""), &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "-f is required") {
		t.Errorf("without -f: exit %d, %s", code, stderr.String())
	}
	stderr.Reset()
	if code := Main([]string{"migrate", "flexvolume", "-f", "no-such-file.yaml"}, strings.NewReader(""), &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no-such-file.yaml") {
		t.Errorf("a missing file: exit %d, %s", code, stderr.String())
	}
}
