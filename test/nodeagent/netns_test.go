package nodeagent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
)

const netnsChild = "COFFER_NETNS_CHILD"

// TestIMDSInNetworkNamespace runs the unmodified azidentity
// ManagedIdentityCredential against the node agent at 169.254.169.254:80,
// the address the SDK hard-codes. So that the test owns that address, it
// re-runs itself inside a network namespace it creates (and deletes),
// where the apiserver, the Coffer server and the agent all run on the
// namespace's own loopback.
func TestIMDSInNetworkNamespace(t *testing.T) {
	if os.Getenv(netnsChild) != "" {
		imdsChild(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test creates a network namespace and must run as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the ip command (iproute2) is needed to create the network namespace: run scripts/deps.sh")
	}
	ns := fmt.Sprintf("coffer-imds-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestIMDSInNetworkNamespace$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsChild+"=1")
	// The SDK picks its managed identity source from these; on this
	// "VM" only IMDS exists.
	cmd.Env = append(cmd.Env, "IDENTITY_ENDPOINT=", "MSI_ENDPOINT=", "IMDS_ENDPOINT=", "IDENTITY_SERVER_THUMBPRINT=", "AZURE_POD_IDENTITY_AUTHORITY_HOST=")
	out, err := cmd.CombinedOutput()
	var keep []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "---") || strings.Contains(line, "netns_test.go") || strings.HasPrefix(strings.TrimSpace(line), "PASS") || strings.HasPrefix(strings.TrimSpace(line), "FAIL") {
			keep = append(keep, line)
		}
	}
	t.Log("in the network namespace:\n" + strings.Join(keep, "\n"))
	if err != nil {
		t.Fatalf("the test in the network namespace failed: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestIMDSInNetworkNamespace") {
		t.Fatal("the test in the network namespace did not report a pass")
	}
}

func imdsChild(t *testing.T) {
	w := start(t)
	const imds = "http://" + nodeagent.IMDSAddress

	read := func(t *testing.T, id azidentity.ManagedIDKind) {
		t.Helper()
		cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		c, err := azsecrets.NewClient(w.env.Admin.VaultURL, cred, &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: w.env.Client.HTTP}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		got, err := c.GetSecret(ctx, "password", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if *got.Value != "s3cr3t-value" {
			t.Fatal("wrong secret value")
		}
		// The token really is the selected identity's.
		tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{vaultResource(w) + "/.default"}})
		if err != nil {
			t.Fatal(err)
		}
		want := w.node.Pool.SystemAssigned.PrincipalID
		if id != nil {
			want = w.node.Attached.PrincipalID
		}
		if oid := claims(t, tok.Token)["oid"]; oid != want {
			t.Fatalf("token for %v, want %s", oid, want)
		}
	}
	ids := map[string]azidentity.ManagedIDKind{
		"system-assigned":             nil,
		"user-assigned by client_id":  azidentity.ClientID(w.node.Attached.ClientID),
		"user-assigned by object_id":  azidentity.ObjectID(w.node.Attached.PrincipalID),
		"user-assigned by msi_res_id": azidentity.ResourceID(w.node.Attached.ID),
	}

	t.Run("link-local", func(t *testing.T) {
		// The agent adds the address itself, as in a DaemonSet, and
		// removes it when it stops.
		agent := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{Redirect: nodeagent.RedirectLinkLocal, LinkLocalInterface: "lo"})
		if agent.URL != imds+":80" {
			t.Fatalf("agent at %s", agent.URL)
		}
		for name, id := range ids {
			t.Run(name, func(t *testing.T) { read(t, id) })
		}
		t.Run("an identity not attached to the node", func(t *testing.T) {
			cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(w.node.Stranger.ClientID)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err = cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{vaultResource(w) + "/.default"}})
			if err == nil || !strings.Contains(err.Error(), "Identity not found") {
				t.Fatalf("want the agent's explanation, got %v", err)
			}
		})
	})

	t.Run("iptables", func(t *testing.T) {
		if _, err := exec.LookPath("iptables"); err != nil {
			t.Fatal("iptables is needed for the redirect test: run scripts/deps.sh")
		}
		// A node has a route to the link-local range; this namespace
		// gets one through lo, and no address: only the DNAT delivers.
		if out, err := exec.Command("ip", "route", "add", nodeagent.IMDSAddress+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("ip route add: %v: %s", err, out)
		}
		agent := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{})
		ipt := &nodeagent.IPTables{Target: strings.TrimPrefix(agent.URL, "http://")}
		ctx := context.Background()
		if err := ipt.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
		if err := ipt.Ensure(ctx); err != nil { // idempotent
			t.Fatal(err)
		}
		rules, _ := exec.Command("iptables", "-t", "nat", "-S").CombinedOutput()
		if n := strings.Count(string(rules), "-j COFFER-IMDS"); n != 2 {
			t.Fatalf("want 2 jumps to COFFER-IMDS, got %d:\n%s", n, rules)
		}
		defer func() {
			if t.Failed() {
				t.Log("agent log:\n" + agent.Log.String())
			}
		}()
		read(t, nil)
		read(t, azidentity.ClientID(w.node.Attached.ClientID))
		if err := ipt.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		rules, _ = exec.Command("iptables", "-t", "nat", "-S").CombinedOutput()
		if strings.Contains(string(rules), "COFFER-IMDS") {
			t.Fatalf("rules left behind:\n%s", rules)
		}
	})
}
