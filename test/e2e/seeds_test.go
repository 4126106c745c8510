package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/mgmthttp"
	"github.com/cofferhq/coffer/internal/testpath"
	"github.com/cofferhq/coffer/test/e2e/cluster"
)

// create applies a manifest's objects in namespace default.
func (in *installation) create(t *testing.T, manifest string) {
	t.Helper()
	for _, doc := range strings.Split(manifest, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		u := map[string]any{}
		if err := yaml.Unmarshal([]byte(doc), &u); err != nil {
			t.Fatal(err)
		}
		obj := unstructuredOf(u)
		if obj.GetNamespace() == "" && obj.GetKind() != "Namespace" {
			obj.SetNamespace("default")
		}
		if err := in.c.Kube.Client.Create(context.Background(), obj); err != nil {
			t.Fatalf("creating %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
}

// setSecret stores a secret in vault demo.
func (in *installation) setSecret(t *testing.T, name, value string) {
	t.Helper()
	sc, err := in.admin.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.SetSecret(context.Background(), name, azsecrets.SetSecretParameters{Value: to.Ptr(value)}, nil); err != nil {
		t.Fatal(err)
	}
}

// allowGet gives a principal get on vault demo's secrets.
func (in *installation) allowGet(t *testing.T, objectID string) {
	t.Helper()
	get := []string{"get"}
	if err := in.admin.Manage(context.Background(), "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: objectID, Secrets: &get}, nil); err != nil {
		t.Fatal(err)
	}
}

// podLog waits until the container printed want, and returns its log.
func (in *installation) podLog(t *testing.T, name, container string, want ...string) string {
	t.Helper()
	p := in.c.WaitPod("default", name, 2*time.Minute)
	var log string
	eventually(t, in.c, "pod "+name+" to print "+strings.Join(want, ", "), time.Minute, func() bool {
		log = in.c.ContainerLog(p, container)
		for _, w := range want {
			if !strings.Contains(log, w) {
				return false
			}
		}
		return true
	})
	return log
}

// TestSeeds runs the seed walkthroughs on a real node with Coffer
// installed by its Helm chart. The pods run the e2e app and use the host
// network (there is no CNI; see README.md); what they saw comes from their
// logs.
func TestSeeds(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Images: tarballs, CRDs: []string{repoFile(t, "deploy/helm/coffer/crds")}})
	waitDefaultSA(t, c)
	in := install(t, c)

	// Seed 000: two objects with aliases, mounted with the node's
	// system-assigned identity (useVMManagedIdentity), read by the
	// container.
	t.Run("seed 000: VM managed identity, two objects with aliases", func(t *testing.T) {
		in.setSecret(t, "secret1", "first value")
		in.setSecret(t, "secret2", "second value")
		in.allowGet(t, in.pool.SystemAssigned.PrincipalID)
		in.create(t, fill(seed000, map[string]string{"tenant": in.env.TenantID}))
		in.podLog(t, "busybox-secrets-store-inline-system-msi", "busybox", `SECRET_1="first value"`, `SECRET_2="second value"`)
	})
}

const seed000 = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-kvname-sys-msi
spec:
  provider: azure
  parameters:
    usePodIdentity: "false"
    useVMManagedIdentity: "true"
    userAssignedIdentityID: ""
    keyvaultName: demo
    cloudName: ""
    objects:  |
      array:
        - |
          objectName: secret1
          objectAlias: SECRET_1
          objectType: secret
          objectVersion: ""
        - |
          objectName: secret2
          objectAlias: SECRET_2
          objectType: secret
          objectVersion: ""
    tenantId: "{{tenant}}"
---
kind: Pod
apiVersion: v1
metadata:
  name: busybox-secrets-store-inline-system-msi
spec:
  nodeName: e2e-node
  hostNetwork: true
  restartPolicy: Never
  containers:
    - name: busybox
      image: coffer.local/app:e2e
      imagePullPolicy: Never
      args: ["files", "/mnt/secrets-store", "SECRET_1", "SECRET_2"]
      volumeMounts:
      - name: secrets-store01-inline
        mountPath: "/mnt/secrets-store"
        readOnly: true
  volumes:
    - name: secrets-store01-inline
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes:
          secretProviderClass: "azure-kvname-sys-msi"
`

func fill(manifest string, vars map[string]string) string {
	for k, v := range vars {
		manifest = strings.ReplaceAll(manifest, "{{"+k+"}}", v)
	}
	return manifest
}

func unstructuredOf(m map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: m}
}

func repoFile(t testing.TB, rel string) string { return testpath.Repo(t, rel) }
