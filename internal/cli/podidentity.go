//go:build !node

package cli

import (
	"fmt"
	"regexp"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
)

var identityIDRE = regexp.MustCompile(`(?i)^/subscriptions/[^/]+/resourcegroups/([^/]+)/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/([^/]+)$`)

func (a *app) podIdentityCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "pod-identity", Short: "Give pods a managed identity (mirrors `az aks pod-identity`)"}
	var ns, name, resourceID, selector, kubeconfig string
	add := &cobra.Command{
		Use:   "add",
		Short: "Create an AzureIdentity and its AzureIdentityBinding for a user-assigned identity",
		Long: `Create, in --namespace, an AzureIdentity named --name for the user-assigned
identity --identity-resource-id (its client id is looked up in Coffer), and an
AzureIdentityBinding {name}-binding whose selector is --binding-selector
(default: --name). Pods of that namespace labelled aadpodidbinding={selector}
then get the identity from the node agent; pods of other namespaces never do.
The node pool's agents must be allowed to act as the identity:
coffer nodepool identity assign --name POOL -g RG --identities ID.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "namespace", "name", "identity-resource-id"); err != nil {
				return err
			}
			if selector == "" {
				selector = name
			}
			for flag, v := range map[string]string{"--namespace": ns, "--name": name} {
				if errs := validation.IsDNS1123Subdomain(v); len(errs) > 0 {
					return usagef("%s %q: %s", flag, v, errs[0])
				}
			}
			if errs := validation.IsValidLabelValue(selector); len(errs) > 0 {
				return usagef("--binding-selector %q is not a valid label value: %s", selector, errs[0])
			}
			m := identityIDRE.FindStringSubmatch(resourceID)
			if m == nil {
				return usagef("--identity-resource-id %q must be /subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}", resourceID)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var ident mgmthttp.IdentityOut
			if err := cl.Manage(c.Context(), "GET", "identities/"+m[1]+"/"+m[2], nil, &ident); err != nil {
				return err
			}
			rc, err := kubeConfig(kubeconfig)
			if err != nil {
				return err
			}
			scheme := runtime.NewScheme()
			podidentity.AddToScheme(scheme)
			kube, err := client.New(rc, client.Options{Scheme: scheme})
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			id := &podidentity.AzureIdentity{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec:       podidentity.AzureIdentitySpec{Type: podidentity.UserAssignedMSI, ResourceID: ident.ID, ClientID: ident.ClientID},
			}
			b := &podidentity.AzureIdentityBinding{
				ObjectMeta: metav1.ObjectMeta{Name: name + "-binding", Namespace: ns},
				Spec:       podidentity.AzureIdentityBindingSpec{AzureIdentity: name, Selector: selector},
			}
			if err := kube.Create(c.Context(), id); err != nil {
				return fmt.Errorf("creating AzureIdentity %s/%s: %w", ns, name, err)
			}
			if err := kube.Create(c.Context(), b); err != nil {
				// Leave nothing half-made, so the command can be re-run.
				if derr := kube.Delete(c.Context(), id); derr != nil {
					return fmt.Errorf("creating AzureIdentityBinding %s/%s: %w (and removing AzureIdentity %s again failed: %v)", ns, b.Name, err, name, derr)
				}
				return fmt.Errorf("creating AzureIdentityBinding %s/%s: %w", ns, b.Name, err)
			}
			out := podIdentityOut{Namespace: ns, Name: name, Binding: b.Name, Selector: selector, ClientID: ident.ClientID, IdentityResourceID: ident.ID}
			return render(a.stdout, a.output, out, []podIdentityOut{out}, podIdentityCols)
		},
	}
	f := add.Flags()
	f.StringVar(&ns, "namespace", "", "namespace of the pods, the AzureIdentity and its binding")
	f.StringVar(&name, "name", "", "name of the AzureIdentity")
	f.StringVar(&resourceID, "identity-resource-id", "", "resource id of the user-assigned identity")
	f.StringVar(&selector, "binding-selector", "", "value of the pods' aadpodidbinding label (default: --name)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	cmd.AddCommand(add)
	return cmd
}

type podIdentityOut struct {
	Namespace          string `json:"namespace"`
	Name               string `json:"name"`
	Binding            string `json:"binding"`
	Selector           string `json:"bindingSelector"`
	ClientID           string `json:"clientId"`
	IdentityResourceID string `json:"identityResourceId"`
}

var podIdentityCols = []column[podIdentityOut]{
	{"Namespace", func(o podIdentityOut) string { return o.Namespace }},
	{"Name", func(o podIdentityOut) string { return o.Name }},
	{"Binding", func(o podIdentityOut) string { return o.Binding }},
	{"Selector", func(o podIdentityOut) string { return o.Selector }},
	{"ClientId", func(o podIdentityOut) string { return o.ClientID }},
}
