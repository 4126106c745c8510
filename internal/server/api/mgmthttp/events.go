package mgmthttp

import (
	"net/http"

	"github.com/cofferhq/coffer/internal/server/events"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
)

// Event Grid's actions on a vault's event subscriptions, checked at the
// vault's scope (Owner and Contributor hold them).
const (
	actionEventSubRead   = "Microsoft.EventGrid/eventSubscriptions/read"
	actionEventSubWrite  = "Microsoft.EventGrid/eventSubscriptions/write"
	actionEventSubDelete = "Microsoft.EventGrid/eventSubscriptions/delete"
)

// EventSubscriptionIn creates an event subscription.
type EventSubscriptionIn struct {
	Endpoint           string   `json:"endpoint"`
	IncludedEventTypes []string `json:"includedEventTypes"`
}

func (h *Handler) createEventSub(r *http.Request, p access.Principal, in EventSubscriptionIn) (any, error) {
	v, err := h.vaultFor(r, p, actionEventSubWrite)
	if err != nil {
		return nil, err
	}
	return h.Events.Create(r.Context(), v, events.Subscription{Name: r.PathValue("sub"), Endpoint: in.Endpoint, IncludedEventTypes: in.IncludedEventTypes})
}

func (h *Handler) listEventSubs(r *http.Request, p access.Principal, _ none) (any, error) {
	v, err := h.vaultFor(r, p, actionEventSubRead)
	if err != nil {
		return nil, err
	}
	subs, err := h.Events.List(r.Context(), v)
	return list(subs), err
}

func (h *Handler) showEventSub(r *http.Request, p access.Principal, _ none) (any, error) {
	v, err := h.vaultFor(r, p, actionEventSubRead)
	if err != nil {
		return nil, err
	}
	return h.Events.Get(r.Context(), v, r.PathValue("sub"))
}

func (h *Handler) deleteEventSub(r *http.Request, p access.Principal, _ none) (any, error) {
	v, err := h.vaultFor(r, p, actionEventSubDelete)
	if err != nil {
		return nil, err
	}
	return nil, h.Events.Delete(r.Context(), v, r.PathValue("sub"))
}
