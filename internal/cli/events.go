//go:build !node

package cli

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/events"
)

var eventSubCols = []column[events.Subscription]{
	{"Name", func(s events.Subscription) string { return s.Name }},
	{"Endpoint", func(s events.Subscription) string { return s.Endpoint }},
	{"IncludedEventTypes", func(s events.Subscription) string {
		if len(s.IncludedEventTypes) == 0 {
			return "(all Microsoft.KeyVault types)"
		}
		return strings.Join(s.IncludedEventTypes, ",")
	}},
	{"DeadLettered", func(s events.Subscription) string { return strconv.FormatInt(s.DeadLettered, 10) }},
}

// eventSubCmd is `coffer vault event-subscription`: Event Grid's
// subscriptions to a vault's events, which `az eventgrid
// event-subscription` makes in Azure, here a part of the vault.
func (a *app) eventSubCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "event-subscription", Short: "Deliver a vault's change events (CloudEvents 1.0, Event Grid's Key Vault types) to an HTTPS endpoint"}
	var vaultName, name, endpoint string
	var types []string
	path := func() string {
		p := "vaults/" + url.PathEscape(vaultName) + "/event-subscriptions"
		if name != "" {
			p += "/" + url.PathEscape(name)
		}
		return p
	}
	verb := func(use, short string, withName bool, run func(c *cobra.Command) error) *cobra.Command {
		c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs, RunE: func(c *cobra.Command, _ []string) error {
			required := []string{"vault-name"}
			if withName {
				required = append(required, "name")
			}
			if err := requireFlags(c, required...); err != nil {
				return err
			}
			return run(c)
		}}
		c.Flags().StringVar(&vaultName, "vault-name", "", "name of the vault")
		if withName {
			c.Flags().StringVarP(&name, "name", "n", "", "name of the subscription")
		}
		return c
	}
	create := verb("create", "Create a subscription; its signing secret is printed once", true, func(c *cobra.Command) error {
		if err := requireFlags(c, "endpoint"); err != nil {
			return err
		}
		cl, err := a.client()
		if err != nil {
			return err
		}
		var out events.Subscription
		if err := cl.Manage(c.Context(), "PUT", path(), mgmthttp.EventSubscriptionIn{Endpoint: endpoint, IncludedEventTypes: types}, &out); err != nil {
			return err
		}
		return render(a.stdout, a.output, out, []events.Subscription{out}, append(eventSubCols, column[events.Subscription]{"Secret", func(s events.Subscription) string { return s.Secret }}))
	})
	create.Flags().StringVar(&endpoint, "endpoint", "", "https URL to deliver to")
	create.Flags().StringSliceVar(&types, "included-event-types", nil, "event types to deliver, such as Microsoft.KeyVault.SecretNewVersionCreated (default: all of Microsoft.KeyVault's)")
	show := verb("show", "Show a subscription", true, func(c *cobra.Command) error {
		cl, err := a.client()
		if err != nil {
			return err
		}
		var out events.Subscription
		if err := cl.Manage(c.Context(), "GET", path(), nil, &out); err != nil {
			return err
		}
		return render(a.stdout, a.output, out, []events.Subscription{out}, eventSubCols)
	})
	list := verb("list", "List a vault's subscriptions", false, func(c *cobra.Command) error {
		cl, err := a.client()
		if err != nil {
			return err
		}
		var out struct {
			Value []events.Subscription `json:"value"`
		}
		name = ""
		if err := cl.Manage(c.Context(), "GET", path(), nil, &out); err != nil {
			return err
		}
		return showAll(a, out.Value, eventSubCols)
	})
	del := verb("delete", "Delete a subscription and the events still queued for it", true, func(c *cobra.Command) error {
		cl, err := a.client()
		if err != nil {
			return err
		}
		return cl.Manage(c.Context(), "DELETE", path(), nil, nil)
	})
	cmd.AddCommand(create, show, list, del)
	return cmd
}
