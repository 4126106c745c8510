//go:build !node

package cli

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/spf13/cobra"
)

// rotationActionView is a lifetime action as `az keyvault key
// rotation-policy show` prints it: the action and its trigger, flattened.
type rotationActionView struct {
	Action           string  `json:"action"`
	TimeAfterCreate  *string `json:"timeAfterCreate"`
	TimeBeforeExpiry *string `json:"timeBeforeExpiry"`
}

type rotationAttrView struct {
	Created    *string `json:"created"`
	ExpiryTime *string `json:"expiryTime"`
	Updated    *string `json:"updated"`
}

type rotationPolicyView struct {
	Attributes      rotationAttrView     `json:"attributes"`
	ID              *string              `json:"id"`
	LifetimeActions []rotationActionView `json:"lifetimeActions"`
}

func viewRotationPolicy(p azkeys.KeyRotationPolicy) rotationPolicyView {
	v := rotationPolicyView{ID: p.ID, LifetimeActions: []rotationActionView{}}
	if a := p.Attributes; a != nil {
		v.Attributes = rotationAttrView{Created: ts(a.Created), ExpiryTime: a.ExpiryTime, Updated: ts(a.Updated)}
	}
	for _, la := range p.LifetimeActions {
		if la == nil {
			continue
		}
		var av rotationActionView
		if la.Action != nil && la.Action.Type != nil {
			av.Action = string(*la.Action.Type)
		}
		if la.Trigger != nil {
			av.TimeAfterCreate, av.TimeBeforeExpiry = la.Trigger.TimeAfterCreate, la.Trigger.TimeBeforeExpiry
		}
		v.LifetimeActions = append(v.LifetimeActions, av)
	}
	return v
}

var rotationPolicyCols = []column[rotationPolicyView]{
	{"ExpiryTime", func(v rotationPolicyView) string { return str(v.Attributes.ExpiryTime) }},
	{"LifetimeActions", func(v rotationPolicyView) string {
		var parts []string
		for _, a := range v.LifetimeActions {
			when := str(a.TimeAfterCreate) + " after create"
			if a.TimeBeforeExpiry != nil {
				when = str(a.TimeBeforeExpiry) + " before expiry"
			}
			parts = append(parts, a.Action+" "+when)
		}
		return strings.Join(parts, "; ")
	}},
	{"Updated", func(v rotationPolicyView) string { return str(v.Attributes.Updated) }},
}

// parseRotationPolicy reads a policy in the REST form ({"lifetimeActions":
// [{"trigger": {...}, "action": {"type": ...}}], "attributes":
// {"expiryTime": ...}}) or in the flattened form az prints and accepts
// ({"action": "Rotate", "timeAfterCreate": ...}, and "expiresIn").
func parseRotationPolicy(data []byte) (azkeys.KeyRotationPolicy, error) {
	var in struct {
		ExpiresIn       *string `json:"expiresIn"`
		LifetimeActions []struct {
			Trigger          *azkeys.LifetimeActionTrigger `json:"trigger"`
			Action           json.RawMessage               `json:"action"`
			TimeAfterCreate  *string                       `json:"timeAfterCreate"`
			TimeBeforeExpiry *string                       `json:"timeBeforeExpiry"`
		} `json:"lifetimeActions"`
		Attributes *struct {
			ExpiryTime *string `json:"expiryTime"`
		} `json:"attributes"`
	}
	var p azkeys.KeyRotationPolicy
	if err := json.Unmarshal(data, &in); err != nil {
		return p, usagef("--value is not a rotation policy: %v", err)
	}
	p.Attributes = &azkeys.KeyRotationPolicyAttributes{ExpiryTime: in.ExpiresIn}
	if in.Attributes != nil && in.Attributes.ExpiryTime != nil {
		p.Attributes.ExpiryTime = in.Attributes.ExpiryTime
	}
	p.LifetimeActions = []*azkeys.LifetimeAction{}
	for _, la := range in.LifetimeActions {
		trig := la.Trigger
		if trig == nil {
			trig = &azkeys.LifetimeActionTrigger{TimeAfterCreate: la.TimeAfterCreate, TimeBeforeExpiry: la.TimeBeforeExpiry}
		}
		var typ string
		if json.Unmarshal(la.Action, &typ) != nil {
			var obj struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(la.Action, &obj); err != nil {
				return p, usagef("--value: a lifetime action's action must be \"Rotate\", \"Notify\" or {\"type\": ...}")
			}
			typ = obj.Type
		}
		p.LifetimeActions = append(p.LifetimeActions, &azkeys.LifetimeAction{
			Trigger: trig, Action: &azkeys.LifetimeActionType{Type: to.Ptr(azkeys.KeyRotationPolicyAction(typ))},
		})
	}
	return p, nil
}

// keyRotationPolicyCmd mirrors `az keyvault key rotation-policy`.
func (a *app) keyRotationPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rotation-policy", Short: "Show or set a key's rotation policy (mirrors `az keyvault key rotation-policy`)"}
	cmd.AddCommand(objVerb(a, keyNoun, "show", "Show a key's rotation policy", false, rotationPolicyCols,
		func(ctx context.Context, kc *azkeys.Client, f *objFlags) (*rotationPolicyView, error) {
			r, err := kc.GetKeyRotationPolicy(ctx, f.name, nil)
			if err != nil {
				return nil, err
			}
			v := viewRotationPolicy(r.KeyRotationPolicy)
			return &v, nil
		}))
	var value string
	update := objVerb(a, keyNoun, "update", "Set a key's rotation policy from JSON (inline or @file)", false, rotationPolicyCols,
		func(ctx context.Context, kc *azkeys.Client, f *objFlags) (*rotationPolicyView, error) {
			data := []byte(value)
			if name, ok := strings.CutPrefix(value, "@"); ok {
				var err error
				if data, err = readInput(a.stdin, name, 64<<10); err != nil {
					return nil, err
				}
			}
			p, err := parseRotationPolicy(data)
			if err != nil {
				return nil, err
			}
			r, err := kc.UpdateKeyRotationPolicy(ctx, f.name, p, nil)
			if err != nil {
				return nil, err
			}
			v := viewRotationPolicy(r.KeyRotationPolicy)
			return &v, nil
		})
	update.Flags().StringVar(&value, "value", "", `the policy: JSON or @file, such as {"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"P1Y"}}`)
	update.MarkFlagRequired("value")
	cmd.AddCommand(update)
	return cmd
}
