package nodeagent

import (
	"bytes"
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/cli"
	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
)

// `coffer pod-identity add`, as `az aks pod-identity add`, binds a
// user-assigned identity to a namespace's labelled pods.
func TestPodIdentityAddCommand(t *testing.T) {
	w := start(t)
	agent := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{})
	agenttest.Namespace(t, w.kube, "shop")
	envFile := filepath.Join(t.TempDir(), "dev.env")
	if err := w.env.Admin.Write(envFile); err != nil {
		t.Fatal(err)
	}
	kubeconfig := w.kube.KubeconfigFile(t)
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli.Main(append(args, "--env-file", envFile, "--kubeconfig", kubeconfig), strings.NewReader(""), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, stderr := run("pod-identity", "add", "--namespace", "shop", "--name", "checkout", "--identity-resource-id", w.node.Bound.ID)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, w.node.Bound.ClientID) || !strings.Contains(out, "checkout-binding") {
		t.Fatalf("output: %s", out)
	}
	var b podidentity.AzureIdentityBinding
	if err := w.kc.Get(context.Background(), keyOf("shop", "checkout-binding"), &b); err != nil || b.Spec.Selector != "checkout" || b.Spec.AzureIdentity != "checkout" {
		t.Fatalf("binding %+v %v", b.Spec, err)
	}
	pod := agenttest.RunningPod(t, w.kube, "shop", "cart", "node-1", "", map[string]string{podidentity.BindingLabel: "checkout"})
	q := "api-version=2018-02-01&resource=" + url.QueryEscape(vaultResource(w))
	eventually(t, "the pod gets the identity", func() bool {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, pod), true)
		return code == 200 && claims(t, body["access_token"])["oid"] == w.node.Bound.PrincipalID
	})

	for _, bad := range [][]string{
		{"--namespace", "shop", "--name", "x", "--identity-resource-id", "not-an-id"},
		{"--namespace", "Shop!", "--name", "x", "--identity-resource-id", w.node.Bound.ID},
		{"--name", "x", "--identity-resource-id", w.node.Bound.ID},
	} {
		code, _, stderr := run(append([]string{"pod-identity", "add"}, bad...)...)
		if code != 2 || stderr == "" {
			t.Errorf("%v: exit %d, %q", bad, code, stderr)
		}
	}
	// An identity Coffer does not know is an error, and creates nothing.
	code, _, stderr = run("pod-identity", "add", "--namespace", "shop", "--name", "ghost", "--identity-resource-id", strings.Replace(w.node.Bound.ID, "/bound", "/ghost", 1))
	if code == 0 || !strings.Contains(stderr, "ghost") {
		t.Fatalf("unknown identity: exit %d, %q", code, stderr)
	}
	var ghost podidentity.AzureIdentity
	if err := w.kc.Get(context.Background(), keyOf("shop", "ghost"), &ghost); err == nil {
		t.Fatal("an AzureIdentity was created for an unknown identity")
	}
}
