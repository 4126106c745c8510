package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/federation"
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

	// Pod identity as seed 002 and 004 set it up: a user-assigned identity
	// the node pool may act as, an AzureIdentity (with the capitalised
	// fields of seed 002's screenshot) and a binding.
	var web mgmthttp.IdentityOut
	ctx := context.Background()
	if err := in.admin.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "web", ResourceGroup: "apps"}, &web); err != nil {
		t.Fatal(err)
	}
	if err := in.admin.Manage(ctx, "POST", "node-pools/nodes/pool1/identities", mgmthttp.AssignIn{Identities: []string{web.ID}}, nil); err != nil {
		t.Fatal(err)
	}
	in.allowGet(t, web.PrincipalID)
	in.create(t, fill(podIdentity, map[string]string{"resourceID": web.ID, "clientID": web.ClientID}))
	in.create(t, fill(caConfigMap, map[string]string{"ca": indent(string(in.caPEM), "    ")}))
	in.setSecret(t, "password", "seed 002 value")

	t.Run("seed 002: IMDS token from the container, then the vault's REST API", func(t *testing.T) {
		in.create(t, fill(seed002, map[string]string{"imds": in.imds, "resource": "https://" + in.suffix, "vault": "https://demo." + in.suffix}))
		in.podLog(t, "aks-helloworld", "app", `imds.status="200"`, `password="seed 002 value"`)
	})

	t.Run("seed 004: pod identity, secretObjects synced to an env var; no label, no mount", func(t *testing.T) {
		in.setSecret(t, "secret-425", "seed 004 value")
		in.create(t, fill(seed004, map[string]string{"tenant": in.env.TenantID}))
		in.podLog(t, "csi-demo", "nginx", `KEYVAULT_SECRET="seed 004 value"`)
		in.podLog(t, "csi-demo", "files", `secret-425="seed 004 value"`)
		in.create(t, strings.Replace(strings.Replace(strings.SplitN(seed004, "---\n", 2)[1], "name: csi-demo", "name: csi-demo-unlabelled", 1), "aadpodidbinding: web", "app: unlabelled", 1))
		eventually(t, in.c, "a FailedMount event that explains", time.Minute, func() bool {
			evs, err := in.c.Kube.Clientset.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=csi-demo-unlabelled"})
			if err != nil {
				return false
			}
			for _, e := range evs.Items {
				if strings.Contains(e.Message, "Identity not assigned") && strings.Contains(e.Message, "default/csi-demo-unlabelled") {
					return true
				}
			}
			return false
		})
	})

	t.Run("workload identity: the webhook's env and token, used by the Go SDK", func(t *testing.T) {
		var mi mgmthttp.IdentityOut
		if err := in.admin.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "wi-app", ResourceGroup: "apps"}, &mi); err != nil {
			t.Fatal(err)
		}
		if err := in.admin.Manage(ctx, "PUT", "identities/apps/wi-app/federated-credentials/k8s", federation.Credential{
			Issuer: in.c.Kube.Issuer, Subject: "system:serviceaccount:default:wi-sa", Audiences: []string{federation.DefaultAudience}}, nil); err != nil {
			t.Fatal(err)
		}
		in.allowGet(t, mi.PrincipalID)
		in.create(t, fill(workload, map[string]string{"clientID": mi.ClientID, "tenant": in.env.TenantID, "vault": "https://demo." + in.suffix}))
		log := in.podLog(t, "wi-app", "app", `password="seed 002 value"`, `AZURE_CLIENT_ID="`+mi.ClientID+`"`)
		if !strings.Contains(log, `AZURE_FEDERATED_TOKEN_FILE="/var/run/secrets/azure/tokens/azure-identity-token"`) {
			t.Fatalf("the webhook's env did not reach the container:\n%s", log)
		}
	})

	t.Run("rotation: the file in the running container and the synced Secret change", func(t *testing.T) {
		in.create(t, fill(rotation, map[string]string{"tenant": in.env.TenantID}))
		in.podLog(t, "rotating", "app", `SECRET_1="first value"`)
		start := time.Now()
		in.setSecret(t, "secret1", "rotated value")
		in.podLog(t, "rotating", "app", `SECRET_1="rotated value"`)
		t.Logf("the container saw the new value %s after the vault changed", time.Since(start).Round(100*time.Millisecond))
		eventually(t, in.c, "the synced Secret to change", time.Minute, func() bool {
			s, err := in.c.Kube.Clientset.CoreV1().Secrets("default").Get(ctx, "rotating-secret", metav1.GetOptions{})
			return err == nil && string(s.Data["value"]) == "rotated value"
		})
	})
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}

const podIdentity = `apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: web-identity
spec:
  type: 0
  ResourceID: {{resourceID}}
  ClientID: {{clientID}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata:
  name: web-identity-binding
spec:
  azureIdentity: web-identity
  selector: web
`

const caConfigMap = `apiVersion: v1
kind: ConfigMap
metadata:
  name: coffer-ca
data:
  ca.crt: |
{{ca}}
`

// Seed 002's helloworld pod, labelled for the binding, doing its curl
// flow with the e2e app.
const seed002 = `apiVersion: v1
kind: Pod
metadata:
  name: aks-helloworld
  labels:
    aadpodidbinding: web
spec:
  nodeName: e2e-node
  hostNetwork: true
  restartPolicy: Never
  containers:
    - name: app
      image: coffer.local/app:e2e
      imagePullPolicy: Never
      args: ["imds", "{{resource}}", "{{vault}}", "password"]
      env:
        - {name: IMDS_ENDPOINT, value: "{{imds}}"}
        - {name: COFFER_CA_FILE, value: /etc/coffer/ca.crt}
      volumeMounts:
        - {name: ca, mountPath: /etc/coffer, readOnly: true}
  volumes:
    - name: ca
      configMap: {name: coffer-ca}
`

// Seed 004's class and pod, with pod identity instead of a
// nodePublishSecretRef, and a second container that reads the file.
const seed004 = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: key-vault-secret
spec:
  provider: azure
  parameters:
    usePodIdentity: "true"
    keyvaultName: "demo"
    objects:  |
      array:
        - |
          objectName: secret-425
          objectType: secret
    tenantId: "{{tenant}}"
  secretObjects:
  - secretName: key-vault-secret
    type: Opaque
    data:
    - objectName: secret-425
      key: secret-content
---
apiVersion: v1
kind: Pod
metadata:
  name: csi-demo
  labels:
    aadpodidbinding: web
spec:
  nodeName: e2e-node
  hostNetwork: true
  restartPolicy: Never
  containers:
  - name: nginx
    image: coffer.local/app:e2e
    imagePullPolicy: Never
    args: ["env", "KEYVAULT_SECRET"]
    env:
      - name: KEYVAULT_SECRET
        valueFrom:
          secretKeyRef:
            name: key-vault-secret
            key: secret-content
    volumeMounts:
      - name: keyvault
        mountPath: /mnt/secrets-store
        readOnly: true
  - name: files
    image: coffer.local/app:e2e
    imagePullPolicy: Never
    args: ["files", "/mnt/secrets-store", "secret-425"]
    volumeMounts:
      - name: keyvault
        mountPath: /mnt/secrets-store
        readOnly: true
  volumes:
    - name: keyvault
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes:
          secretProviderClass: key-vault-secret
`

const workload = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: wi-sa
  annotations:
    azure.workload.identity/client-id: "{{clientID}}"
    azure.workload.identity/tenant-id: "{{tenant}}"
---
apiVersion: v1
kind: Pod
metadata:
  name: wi-app
  labels:
    azure.workload.identity/use: "true"
spec:
  serviceAccountName: wi-sa
  nodeName: e2e-node
  hostNetwork: true
  restartPolicy: Never
  containers:
    - name: app
      image: coffer.local/app:e2e
      imagePullPolicy: Never
      args: ["workload", "{{vault}}", "password"]
      env:
        - {name: COFFER_CA_FILE, value: /etc/coffer/ca.crt}
      volumeMounts:
        - {name: ca, mountPath: /etc/coffer, readOnly: true}
  volumes:
    - name: ca
      configMap: {name: coffer-ca}
`

const rotation = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: rotating
spec:
  provider: azure
  parameters:
    useVMManagedIdentity: "true"
    keyvaultName: demo
    objects:  |
      array:
        - |
          objectName: secret1
          objectAlias: SECRET_1
          objectType: secret
    tenantId: "{{tenant}}"
  secretObjects:
  - secretName: rotating-secret
    type: Opaque
    data:
    - objectName: SECRET_1
      key: value
---
apiVersion: v1
kind: Pod
metadata:
  name: rotating
spec:
  nodeName: e2e-node
  hostNetwork: true
  restartPolicy: Never
  containers:
    - name: app
      image: coffer.local/app:e2e
      imagePullPolicy: Never
      args: ["watch", "/mnt/secrets-store/SECRET_1"]
      volumeMounts:
        - {name: store, mountPath: /mnt/secrets-store, readOnly: true}
  volumes:
    - name: store
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes:
          secretProviderClass: rotating
`

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
