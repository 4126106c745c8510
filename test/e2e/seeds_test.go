package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	cluster "github.com/cofferhq/coffer/internal/cli/localcluster"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/testpath"
)

// create applies a manifest's objects in namespace default, and logs what
// the apiserver warns about (such as the deprecated v1alpha1 of a seed's
// class).
func (in *installation) create(t *testing.T, manifest string) {
	t.Helper()
	kc, warnings := warningClient(t, in.c)
	for _, doc := range strings.Split(manifest, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		u := map[string]any{}
		if err := yaml.Unmarshal([]byte(doc), &u); err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{Object: u}
		if obj.GetNamespace() == "" && obj.GetKind() != "Namespace" {
			obj.SetNamespace("default")
		}
		if err := kc.Create(context.Background(), obj); err != nil {
			t.Fatalf("creating %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		if w := warnings.Take(); len(w) > 0 {
			t.Logf("the apiserver warns about %s %s: %s", obj.GetKind(), obj.GetName(), strings.Join(w, "; "))
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

// exec runs a command in a running pod's container, as `kubectl exec`
// would, and returns its standard output.
func (in *installation) exec(t *testing.T, pod, container string, command ...string) string {
	t.Helper()
	in.c.WaitPod("default", pod, 2*time.Minute)
	out, stderr, err := in.c.Exec("default", pod, container, command...)
	if err != nil {
		t.Fatalf("kubectl exec %s -c %s -- %s: %v\nstdout: %s\nstderr: %s", pod, container, redact(command), err, out, stderr)
	}
	return out
}

// redact is a command line for a message, with the tokens of its
// Authorization headers left out.
func redact(command []string) string {
	out := slices.Clone(command)
	for i, a := range out {
		if k, _, ok := strings.Cut(a, ":"); ok && strings.EqualFold(strings.TrimSpace(k), "Authorization") {
			out[i] = k + ": (redacted)"
		}
	}
	return strings.Join(out, " ")
}

// jq is the seeds' `jq -r .field`: a JSON document's string field.
func jq(t *testing.T, doc, field string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatalf("not JSON (%v): %s", err, doc)
	}
	s, _ := m[field].(string)
	return s
}

// TestSeeds runs the seed walkthroughs on a real node with Coffer
// installed by its Helm chart. The pods are the seeds' own manifests, with
// only the image, the vault, the tenant and the identities changed: they
// are scheduled, get addresses on the node's bridge, and resolve the
// vault's name through the node's resolver. What they saw comes from
// `kubectl exec` and `kubectl logs`.
func TestSeeds(t *testing.T) {
	checkExamples(t)
	c := startNode(t, cluster.Options{Images: tarballs(t)})
	waitDefaultSA(t, c)
	in := install(t, c)
	ctx := context.Background()
	t.Run("a second coffer install upgrades, and keeps the keys, the tenant and the node pool", in.upgrade)
	tenant := map[string]string{"TENANT_ID": in.env.TenantID}

	// Seed 000: two objects with aliases, mounted with the node's
	// system-assigned identity (useVMManagedIdentity), read with
	// `kubectl exec ... ls` and `cat`; all while one of the two server
	// replicas is deleted, so that the other serves everything: the
	// secrets and the policy written, the node agent's token, the
	// provider's reads.
	t.Run("seed 000: VM managed identity, two objects with aliases, one server replica deleted", func(t *testing.T) {
		in.withoutOneServer(t)
		in.setSecret(t, "secret1", "first value")
		in.setSecret(t, "secret2", "second value")
		in.allowGet(t, in.pool.SystemAssigned.PrincipalID)
		in.create(t, example(t, "seed-000", tenant))
		const pod, ctr = "busybox-secrets-store-inline-system-msi", "busybox"
		if got := in.exec(t, pod, ctr, "ls", "/mnt/secrets-store/"); got != "SECRET_1\nSECRET_2\n" {
			t.Fatalf("ls /mnt/secrets-store/ = %q", got)
		}
		if got := in.exec(t, pod, ctr, "cat", "/mnt/secrets-store/SECRET_1"); got != "first value" {
			t.Fatalf("cat SECRET_1 = %q", got)
		}
		if got := in.exec(t, pod, ctr, "cat", "/mnt/secrets-store/SECRET_2"); got != "second value" {
			t.Fatalf("cat SECRET_2 = %q", got)
		}
	})

	// Pod identity as seed 002 and 004 set it up: a user-assigned identity
	// the node pool may act as, an AzureIdentity (with the capitalised
	// fields of seed 002's screenshot) and a binding.
	var web mgmthttp.IdentityOut
	if err := in.admin.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "web", ResourceGroup: "apps"}, &web); err != nil {
		t.Fatal(err)
	}
	if err := in.admin.Manage(ctx, "POST", "node-pools/nodes/pool1/identities", mgmthttp.AssignIn{Identities: []string{web.ID}}, nil); err != nil {
		t.Fatal(err)
	}
	in.allowGet(t, web.PrincipalID)
	// kubectl create configmap coffer-ca --from-file=ca.crt=admin.env.ca.pem
	if err := c.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "coffer-ca", Namespace: "default"},
		Data: map[string]string{"ca.crt": string(in.caPEM)}}); err != nil {
		t.Fatal(err)
	}
	in.setSecret(t, "password", "seed 002 value")

	// Seed 002: the demo pod is labelled after it starts; then, inside it,
	// curl asks 169.254.169.254 for a token and calls the vault's REST API
	// with it. In Coffer's default mode the pod proves who it is with its
	// service-account token, the $(cat ...) of the curl command.
	t.Run("seed 002: IMDS token from the container, then the vault's REST API", func(t *testing.T) {
		in.create(t, example(t, "seed-002", map[string]string{"RESOURCE_ID": web.ID, "CLIENT_ID": web.ClientID}))
		const pod, ctr = "aks-helloworld", "app"
		resource := "https://" + in.suffix
		imds := "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + url.QueryEscape(resource)
		proof := "Authorization: Bearer " + in.exec(t, pod, ctr, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token")

		// Before the label: the agent answers, and refuses.
		refused := in.exec(t, pod, ctr, "curl", imds, "-H", "Metadata:true", "-H", proof, "-s")
		if jq(t, refused, "access_token") != "" || !strings.Contains(refused, "Identity not assigned") || !strings.Contains(refused, "default/aks-helloworld") {
			t.Fatalf("an unlabelled pod's IMDS request was answered with %s", refused)
		}
		// kubectl label pod aks-helloworld aadpodidbinding=web
		patch := []byte(`{"metadata":{"labels":{"aadpodidbinding":"web"}}}`)
		if _, err := c.Clientset.CoreV1().Pods("default").Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		var token string
		eventually(t, c, "a token for the labelled pod", 30*time.Second, func() bool {
			out, _, err := c.Exec("default", pod, ctr, "curl", imds, "-H", "Metadata:true", "-H", proof, "-s")
			token = ""
			if err == nil && json.Unmarshal([]byte(out), &map[string]any{}) == nil {
				token = jq(t, out, "access_token")
			}
			return token != ""
		})
		body := in.exec(t, pod, ctr, "curl", "https://demo."+in.suffix+"//secrets/password?api-version=2016-10-01",
			"-H", "Authorization: Bearer "+token, "-s", "--cacert", "/etc/coffer/ca.crt")
		if got := jq(t, body, "value"); got != "seed 002 value" {
			t.Fatalf("the vault answered %s", body)
		}
		// Troubleshooting, as the seed does it: which pod holds which
		// identity (kubectl get AzureAssignedIdentities -o jsonpath=...).
		eventually(t, c, "the pod's AzureAssignedIdentity", 30*time.Second, func() bool {
			return strings.Contains(assigned(t, in), "aks-helloworld\tdefault\tweb-identity")
		})
	})

	t.Run("seed 004: pod identity, secretObjects synced to an env var; no label, no mount", func(t *testing.T) {
		in.setSecret(t, "secret-425", "seed 004 value")
		seed004 := example(t, "seed-004", tenant)
		in.create(t, seed004)
		// kubectl exec -it csi-demo -- sh; echo $KEYVAULT_SECRET; cat ...
		if got := in.exec(t, "csi-demo", "nginx", "printenv", "KEYVAULT_SECRET"); got != "seed 004 value\n" {
			t.Fatalf("KEYVAULT_SECRET = %q", got)
		}
		if got := in.exec(t, "csi-demo", "nginx", "cat", "/mnt/secrets-store/secret-425"); got != "seed 004 value" {
			t.Fatalf("cat secret-425 = %q", got)
		}
		unlabelled := strings.Replace(strings.Replace(strings.SplitN(seed004, "---\n", 2)[1], "name: csi-demo", "name: csi-demo-unlabelled", 1), "aadpodidbinding: web", "app: unlabelled", 1)
		in.create(t, unlabelled)
		eventually(t, in.c, "a FailedMount event that explains", time.Minute, func() bool {
			evs, err := in.c.Clientset.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=csi-demo-unlabelled"})
			if err != nil {
				return false
			}
			for _, e := range evs.Items {
				if e.Reason == "FailedMount" && strings.Contains(e.Message, "Identity not assigned") && strings.Contains(e.Message, "default/csi-demo-unlabelled") {
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
			Issuer: in.c.Issuer, Subject: "system:serviceaccount:default:wi-sa", Audiences: []string{federation.DefaultAudience}}, nil); err != nil {
			t.Fatal(err)
		}
		in.allowGet(t, mi.PrincipalID)
		in.create(t, example(t, "workload-identity", map[string]string{"CLIENT_ID": mi.ClientID, "TENANT_ID": in.env.TenantID, "VAULT_URL": "https://demo." + in.suffix}))
		log := in.podLog(t, "wi-app", "app", `password="seed 002 value"`, `AZURE_CLIENT_ID="`+mi.ClientID+`"`)
		if !strings.Contains(log, `AZURE_FEDERATED_TOKEN_FILE="/var/run/secrets/azure/tokens/azure-identity-token"`) {
			t.Fatalf("the webhook's env did not reach the container:\n%s", log)
		}

		// The same identity for a CSI volume (the class's clientID): the
		// kubelet requests the pod's token for the CSIDriver's audience and
		// passes it in the request's secrets (serviceAccountTokenInSecrets).
		if got := in.exec(t, "wi-volume", "app", "cat", "/mnt/secrets-store/password"); got != "seed 002 value" {
			t.Fatalf("cat password = %q", got)
		}
	})

	syncCases(t, in)

	t.Run("push rotation: the file in the running container and the synced Secret change", func(t *testing.T) {
		in.setSecret(t, "secret1", "first value")
		in.allowGet(t, in.pool.SystemAssigned.PrincipalID)
		in.create(t, example(t, "rotation", tenant))
		in.podLog(t, "rotating", "app", `SECRET_1="first value"`)
		start := time.Now()
		in.setSecret(t, "secret1", "rotated value")
		// Within 30 s, though rotationPollInterval is 10 minutes and the
		// kubelet republishes every minute: only a push (the provider's
		// held read on the vault, then the driver's refresh) is that fast.
		p := in.c.WaitPod("default", "rotating", time.Minute)
		eventually(t, in.c, "the container to see the rotated value", 30*time.Second, func() bool {
			return strings.Contains(in.c.ContainerLog(p, "app"), `SECRET_1="rotated value"`)
		})
		t.Logf("the container saw the new value %s after the vault changed", time.Since(start).Round(10*time.Millisecond))
		eventually(t, in.c, "the synced Secret to change", 30*time.Second, func() bool {
			s, err := in.c.Clientset.CoreV1().Secrets("default").Get(ctx, "rotating-secret", metav1.GetOptions{})
			return err == nil && string(s.Data["value"]) == "rotated value"
		})
	})

	t.Run("coffer uninstall leaves nothing behind", in.uninstall)
}

// holdFinalizer keeps a deleted server pod, and so its name, which its
// StatefulSet needs for the replacement, until the test lets it go.
const holdFinalizer = "e2e.coffer.io/hold"

// withoutOneServer deletes one server pod and returns once its containers
// have stopped and the proxy forwards nothing more to it. It is replaced
// when the test ends (and the rest of TestSeeds runs on two replicas
// again): until then a finalizer holds the deleted pod, so no replacement
// can start. The test then checks that the surviving replica, and only
// it, received the connections made meanwhile.
func (in *installation) withoutOneServer(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pods := in.c.Clientset.CoreV1().Pods(ns)
	const selector = "app.kubernetes.io/component=server"
	servers := in.c.WaitPodsOf(ns, selector, serverReplicas, time.Minute)
	slices.SortFunc(servers, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	gone, kept := servers[0], servers[1]
	release := func() {
		patch := []byte(`{"metadata":{"finalizers":null}}`)
		if _, err := pods.Patch(ctx, gone.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("releasing the deleted server pod: %v", err)
		}
	}
	patch := []byte(`{"metadata":{"finalizers":["` + holdFinalizer + `"]}}`)
	if _, err := pods.Patch(ctx, gone.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	start := time.Now()
	if err := pods.Delete(ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	goneAddr := net.JoinHostPort(gone.Status.PodIP, strconv.Itoa(serverPort))
	eventually(t, in.c, "the deleted server pod to stop and leave the Service's endpoints", time.Minute, func() bool {
		p, err := pods.Get(ctx, gone.Name, metav1.GetOptions{})
		if err != nil || p.UID != gone.UID || slices.Contains(in.proxy.Endpoints(), goneAddr) {
			return false
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Terminated == nil {
				return false
			}
		}
		return len(p.Status.ContainerStatuses) > 0
	})
	t.Logf("e2e: server pod %s deleted; it stopped and left the endpoints in %s; %s serves alone", gone.Name, time.Since(start).Round(10*time.Millisecond), kept.Name)
	keptAddr := net.JoinHostPort(kept.Status.PodIP, strconv.Itoa(serverPort))
	before := in.proxy.Forwarded()
	t.Cleanup(func() {
		after := in.proxy.Forwarded()
		if after[goneAddr] != before[goneAddr] {
			t.Errorf("the proxy sent %d connections to the deleted server pod", after[goneAddr]-before[goneAddr])
		}
		if after[keptAddr] == before[keptAddr] {
			t.Errorf("the surviving server pod %s received no connection while the other was deleted", kept.Name)
		}
		t.Logf("e2e: %d connections went to %s while %s was deleted", after[keptAddr]-before[keptAddr], kept.Name, gone.Name)
		release()
		in.c.WaitPodsOf(ns, selector, serverReplicas, 2*time.Minute)
		t.Logf("e2e: %s replaced; %d server replicas ready again", gone.Name, serverReplicas)
	})
}

// assigned is seed 002's troubleshooting command:
//
//	kubectl get AzureAssignedIdentities -A -o jsonpath='{range .items[*]}{@.spec.pod}{"\t"}{@.metadata.namespace}{"\t"}{@.spec.azureIdentityRef.metadata.name}{"\n"}'
func assigned(t *testing.T, in *installation) string {
	t.Helper()
	l := &unstructured.UnstructuredList{}
	l.SetAPIVersion("aadpodidentity.k8s.io/v1")
	l.SetKind("AzureAssignedIdentityList")
	if err := in.c.Client.List(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, it := range l.Items {
		pod, _, _ := unstructured.NestedString(it.Object, "spec", "pod")
		id, _, _ := unstructured.NestedString(it.Object, "spec", "azureIdentityRef", "metadata", "name")
		b.WriteString(pod + "\t" + it.GetNamespace() + "\t" + id + "\n")
	}
	return b.String()
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}

// examples are the directories of examples/ that TestSeeds applies.
var examples = []string{"rotation", "secret-sync", "seed-000", "seed-002", "seed-004", "workload-identity"}

// checkExamples fails if examples/ holds one that TestSeeds does not
// apply.
func checkExamples(t *testing.T) {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(testpath.Repo(t, "examples"), "*", "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range dirs {
		got = append(got, filepath.Base(filepath.Dir(d)))
	}
	if !slices.Equal(got, examples) {
		t.Fatalf("examples/ holds %v, TestSeeds applies %v", got, examples)
	}
}

// example is examples/{name}/manifest.yaml with its ${…} variables
// substituted, as the example's README does with envsubst, and nothing
// else changed. A variable vars lacks fails the test.
func example(t *testing.T, name string, vars map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(testpath.Repo(t, filepath.Join("examples", name, "manifest.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	return os.Expand(string(b), func(k string) string {
		v, ok := vars[k]
		if !ok {
			t.Fatalf("examples/%s uses ${%s}, which the test does not give", name, k)
		}
		return v
	})
}
