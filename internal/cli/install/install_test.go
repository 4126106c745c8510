package install

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
)

func TestValuesAreCheckedBeforeAnythingChanges(t *testing.T) {
	ch, err := Chart()
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		values   map[string]any
		suffix   string
		conflict string // the path of a ValueConflictError
		chart    string // part of a ChartValuesError
	}{
		"defaults":               {suffix: "vault.example.com"},
		"the suffix from values": {values: map[string]any{"server": map[string]any{"dnsSuffix": "vault.example.com"}}},
		"the same suffix twice":  {values: map[string]any{"server": map[string]any{"dnsSuffix": "vault.example.com"}}, suffix: "vault.example.com"},
		"two suffixes": {values: map[string]any{"server": map[string]any{"dnsSuffix": "kv.example.com"}}, suffix: "vault.example.com",
			conflict: "server.dnsSuffix"},
		"another TLS Secret": {values: map[string]any{"server": map[string]any{"tls": map[string]any{"secretName": "mine"}}}, suffix: "v.example",
			conflict: "server.tls.secretName"},
		"another root key": {values: map[string]any{"server": map[string]any{"rootKey": map[string]any{"key": "k"}}}, suffix: "v.example",
			conflict: "server.rootKey.key"},
		"a tenant":                       {values: map[string]any{"tenantID": "11111111-2222-3333-4444-555555555555"}, suffix: "v.example", conflict: "tenantID"},
		"a system identity":              {values: map[string]any{"nodeAgent": map[string]any{"systemIdentity": "x"}}, suffix: "v.example", conflict: "nodeAgent.systemIdentity"},
		"no server":                      {values: map[string]any{"server": map[string]any{"enabled": false}}, suffix: "v.example", conflict: "server.enabled"},
		"an empty tenant is no conflict": {values: map[string]any{"tenantID": ""}, suffix: "v.example"},
		"two replicas on bolt": {values: map[string]any{"server": map[string]any{"replicas": 2}}, suffix: "v.example",
			chart: "server.replicas is 2, but server.storage.type bolt"},
		"etcd without endpoints": {values: map[string]any{"server": map[string]any{"storage": map[string]any{"type": "etcd"}}}, suffix: "v.example",
			chart: "server.storage.etcd.endpoints is required"},
		"the Azure chart's names": {values: map[string]any{"secrets-store-csi-driver": map[string]any{"enableSecretRotation": true, "rotationPollInterval": "1m"}}, suffix: "v.example"},
		"an Azure name and Coffer's disagree": {values: map[string]any{"enableSecretRotation": false, "secrets-store-csi-driver": map[string]any{"enableSecretRotation": true}}, suffix: "v.example",
			chart: "secrets-store-csi-driver.enableSecretRotation (true, the Azure provider chart's name) and enableSecretRotation (false) disagree"},
	} {
		t.Run(name, func(t *testing.T) {
			o := Options{Values: tc.values, DNSSuffix: tc.suffix}
			if err := o.defaults(); err != nil {
				t.Fatal(err)
			}
			suffix, err := dnsSuffix(o)
			if err == nil {
				err = checkValues(ch, o, suffix)
			}
			var vc *ValueConflictError
			var cv *ChartValuesError
			switch {
			case tc.conflict != "":
				if !errors.As(err, &vc) || vc.Path != tc.conflict {
					t.Fatalf("got %v, want a conflict on %s", err, tc.conflict)
				}
			case tc.chart != "":
				if !errors.As(err, &cv) || !strings.Contains(err.Error(), tc.chart) {
					t.Fatalf("got %v, want the chart to refuse: %s", err, tc.chart)
				}
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			}
		})
	}
}

func TestComponentsFollowTheValues(t *testing.T) {
	for _, tc := range []struct {
		vals map[string]any
		want string
	}{
		{map[string]any{}, "server csi-driver provider node-agent webhook"},
		{map[string]any{"webhook": map[string]any{"enabled": false}, "linux": map[string]any{"enabled": true}}, "server csi-driver provider node-agent"},
		{map[string]any{"nodeAgent": map[string]any{"enabled": false}, "provider": map[string]any{"enabled": false}}, "server csi-driver webhook"},
		// The Azure provider chart's names (seed 001's Terraform set blocks).
		{map[string]any{"secrets-store-csi-driver": map[string]any{"install": true, "enableSecretRotation": true}}, "server csi-driver provider node-agent webhook"},
		{map[string]any{"secrets-store-csi-driver": map[string]any{"install": false}}, "server provider node-agent webhook"},
		{map[string]any{"secrets-store-csi-driver": map[string]any{"linux": map[string]any{"enabled": "false"}}}, "server provider node-agent webhook"},
	} {
		if got := strings.Join(components(tc.vals), " "); got != tc.want {
			t.Errorf("components(%v) = %s, want %s", tc.vals, got, tc.want)
		}
	}
}

// kubeconfig writes a kubeconfig file for cfg.
func kubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// A user without the rights is told every one they lack, before anything
// is created; the real apiserver answers the access reviews.
func TestMissingRBACIsReportedUpFront(t *testing.T) {
	env := kubetest.Start(t, kubetest.Options{})
	ctx := context.Background()
	var out bytes.Buffer
	_, err := Install(ctx, Options{Kubeconfig: kubeconfig(t, env.UserConfig(t, "alice")), DNSSuffix: "vault.example.com", Out: &out})
	var mr *MissingRBACError
	if !errors.As(err, &mr) {
		t.Fatalf("got %v, want a MissingRBACError", err)
	}
	if mr.User != "alice" || len(mr.Missing) != len(installNeeds("coffer-system")) {
		t.Errorf("user %q, %d missing of %d", mr.User, len(mr.Missing), len(installNeeds("coffer-system")))
	}
	for _, want := range []string{"alice may not get namespaces cluster-wide", "create customresourcedefinitions.apiextensions.k8s.io cluster-wide",
		"create pods/portforward in namespace coffer-system", "cluster-admin"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	if _, err := env.Clientset.CoreV1().Namespaces().Get(ctx, "coffer-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the namespace was created (or: %v)", err)
	}
	// The administrator may: the same check passes.
	c, err := connect(ctx, kubeconfig(t, env.Config), "", "coffer-system")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.checkAccess(ctx, installNeeds("coffer-system")); err != nil {
		t.Errorf("the administrator was refused: %v", err)
	}
	if err := c.checkAccess(ctx, uninstallNeeds("coffer-system")); err != nil {
		t.Errorf("the administrator was refused to uninstall: %v", err)
	}
}

func TestNoClusterAccess(t *testing.T) {
	ctx := context.Background()
	for name, cfg := range map[string]string{
		"no such kubeconfig":     filepath.Join(t.TempDir(), "missing"),
		"nothing at its address": kubeconfig(t, &rest.Config{Host: "https://127.0.0.1:1"}),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Install(ctx, Options{Kubeconfig: cfg, DNSSuffix: "vault.example.com"})
			var nc *NoClusterError
			if !errors.As(err, &nc) || !strings.HasPrefix(err.Error(), "no cluster access") {
				t.Fatalf("got %v, want a NoClusterError", err)
			}
		})
	}
}

// The chart built into the binary is the chart in deploy/helm/coffer:
// every file Helm would load from the directory is embedded, the
// templates named _*.tpl included (which go:embed skips by default).
func TestEmbeddedChartIsTheDirectory(t *testing.T) {
	ch, err := Chart()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := loader.Load("../../../deploy/helm/coffer")
	if err != nil {
		t.Fatal(err)
	}
	names := func(c *chartv2.Chart) []string {
		var out []string
		for _, f := range c.Templates {
			out = append(out, f.Name)
		}
		for _, f := range c.Files {
			// The chart's documentation, and Helm's ignore list, which
			// the templates do not read: not embedded.
			if f.Name != "README.md" && f.Name != ".helmignore" {
				out = append(out, f.Name)
			}
		}
		slices.Sort(out)
		return out
	}
	if got, want := names(ch), names(dir); !slices.Equal(got, want) {
		t.Errorf("embedded chart has %v, the directory %v", got, want)
	}
	if len(ch.CRDObjects()) != len(dir.CRDObjects()) || len(ch.CRDObjects()) == 0 {
		t.Errorf("embedded chart has %d CRDs, the directory %d", len(ch.CRDObjects()), len(dir.CRDObjects()))
	}
}
