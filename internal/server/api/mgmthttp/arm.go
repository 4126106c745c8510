package mgmthttp

import (
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/cofferhq/coffer/internal/server/api/httpjson"
	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
)

// The slice of Azure Resource Manager that the Azure CLI needs to sign in:
// `az cloud register --endpoint-resource-manager` reads the metadata
// document, and `az login` lists the caller's subscriptions and fails when
// it cannot. Coffer's tenants have exactly one subscription each.

// SubscriptionAPIVersions are the ARM api-versions of the subscription
// routes: the Azure CLI 2.45 sends 2019-11-01; later CLIs send 2022-12-01.
var SubscriptionAPIVersions = []string{"2016-06-01", "2018-06-01", "2019-06-01", "2019-11-01", "2020-01-01", "2021-01-01", "2022-12-01"}

// metadataArrayFrom is the first api-version whose metadata document is an
// array of clouds; earlier ones (the CLI sends 2015-01-01) get one object.
const metadataArrayFrom = "2019-05-01"

// CloudName is the cloud name the metadata document gives Coffer.
const CloudName = "Coffer"

var apiVersionRE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}(-preview)?$`)

// IsARMPath reports whether path is one of the ARM routes, which the server
// sends to this handler beside Prefix. Extra leading slashes count: the
// Azure CLI appends "/metadata/endpoints" to the resource manager URL it
// was given, and users type that URL with its trailing slash; the mux
// then redirects to the clean path, which the CLI follows.
func IsARMPath(path string) bool {
	path = "/" + strings.TrimLeft(path, "/")
	return path == "/metadata/endpoints" || path == "/subscriptions" || strings.HasPrefix(path, "/subscriptions/")
}

func (h *Handler) armRoutes() {
	h.mux.HandleFunc("GET /metadata/endpoints", h.metadata)
	h.mux.Handle("GET /subscriptions", armVersion(handle(h, http.StatusOK, h.listSubscriptions)))
	h.mux.Handle("GET /subscriptions/{id}", armVersion(handle(h, http.StatusOK, h.getSubscription)))
	h.mux.HandleFunc("/subscriptions/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		writeErr(w, http.StatusNotFound, "NotFound", "Coffer serves only GET /subscriptions and GET /subscriptions/{id} of Azure Resource Manager; manage resources with the coffer CLI (/coffer/v1).")
	})
}

// armVersion refuses a request without a supported api-version, as ARM does.
// Its refusals are no-store, as every answer of the operations it guards.
func armVersion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := r.URL.Query().Get("api-version")
		if !slices.Contains(SubscriptionAPIVersions, v) {
			w.Header().Set("Cache-Control", "no-store")
		}
		switch {
		case v == "":
			writeErr(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		case !slices.Contains(SubscriptionAPIVersions, v):
			writeErr(w, http.StatusBadRequest, "InvalidApiVersionParameter", "The api-version '"+sanitizeVersion(v)+"' is invalid. The supported versions are '"+strings.Join(SubscriptionAPIVersions, ",")+"'.")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// sanitizeVersion keeps an echoed api-version short and printable.
func sanitizeVersion(v string) string {
	if len(v) > 40 {
		v = v[:40]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, v)
}

// Subscription is a subscription in ARM's shape (api-version 2019-11-01).
type Subscription struct {
	ID                   string              `json:"id"`
	SubscriptionID       string              `json:"subscriptionId"`
	TenantID             string              `json:"tenantId"`
	DisplayName          string              `json:"displayName"`
	State                string              `json:"state"`
	SubscriptionPolicies SubscriptionPolicy  `json:"subscriptionPolicies"`
	AuthorizationSource  string              `json:"authorizationSource"`
	ManagedByTenants     []map[string]string `json:"managedByTenants"`
}

// SubscriptionPolicy is ARM's subscriptionPolicies object.
type SubscriptionPolicy struct {
	LocationPlacementID string `json:"locationPlacementId"`
	QuotaID             string `json:"quotaId"`
	SpendingLimit       string `json:"spendingLimit"`
}

func (h *Handler) tenantSubscription(r *http.Request, p access.Principal) (Subscription, error) {
	info := audit.From(r.Context())
	info.Operation = "Microsoft.Resources/subscriptions/read"
	t, err := h.Authority.Tenant(r.Context(), p.TenantID)
	if err != nil {
		return Subscription{}, err
	}
	// Any principal of the tenant holding a management token sees the
	// tenant's one subscription: its id is in every resource id the
	// principal is shown anyway, and az login fails without it.
	info.Object, info.Decision = "/subscriptions/"+t.SubscriptionID, "allow"
	return Subscription{
		ID: "/subscriptions/" + t.SubscriptionID, SubscriptionID: t.SubscriptionID, TenantID: t.ID,
		DisplayName: t.DisplayName, State: "Enabled", AuthorizationSource: "RoleBased", ManagedByTenants: []map[string]string{},
		SubscriptionPolicies: SubscriptionPolicy{LocationPlacementID: "Internal_2014-09-01", QuotaID: "Internal_2014-09-01", SpendingLimit: "Off"},
	}, nil
}

func (h *Handler) listSubscriptions(r *http.Request, p access.Principal, _ none) (any, error) {
	s, err := h.tenantSubscription(r, p)
	if err != nil {
		return nil, err
	}
	return map[string]any{"value": []Subscription{s}, "count": map[string]any{"type": "Total", "value": 1}}, nil
}

func (h *Handler) getSubscription(r *http.Request, p access.Principal, _ none) (any, error) {
	s, err := h.tenantSubscription(r, p)
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(r.PathValue("id"), s.SubscriptionID) {
		return nil, &subscriptionNotFound{id: r.PathValue("id")}
	}
	return s, nil
}

// subscriptionNotFound is ARM's 404 for a subscription the caller cannot
// see (another tenant's, or none).
type subscriptionNotFound struct{ id string }

func (e *subscriptionNotFound) Error() string {
	return "The subscription '" + sanitizeVersion(e.id) + "' could not be found."
}

// metadata serves ARM's cloud metadata document, from which `az cloud
// register --endpoint-resource-manager` takes the login endpoint and the
// management audience. The login endpoint ends in /adfs: it is the only
// form for which the CLI's MSAL skips instance discovery (a call to the
// public cloud) and reads {login}/.well-known/openid-configuration.
func (h *Handler) metadata(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query().Get("api-version")
	if v == "" {
		writeErr(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return
	}
	if !apiVersionRE.MatchString(v) {
		writeErr(w, http.StatusBadRequest, "InvalidApiVersionParameter", "The api-version '"+sanitizeVersion(v)+"' is invalid: use a date such as 2015-01-01 or 2022-09-01.")
		return
	}
	ep := h.Endpoints
	login := ep.AuthorityURL() + "/adfs"
	audiences := []string{endpoint.ManagementResource}
	if v < metadataArrayFrom {
		// Coffer has no Graph API, but az cloud register requires a graph
		// audience: it gets the management one, which Graph-only
		// commands then fail with, rather than a token for another API.
		httpjson.Write(w, http.StatusOK, map[string]any{
			"galleryEndpoint": "",
			"graphEndpoint":   endpoint.ManagementResource,
			"portalEndpoint":  "",
			"authentication":  map[string]any{"loginEndpoint": login, "audiences": audiences},
		})
		return
	}
	httpjson.Write(w, http.StatusOK, []map[string]any{{
		"name":            CloudName,
		"resourceManager": ep.AuthorityURL() + "/",
		"graph":           endpoint.ManagementResource,
		"graphAudience":   endpoint.ManagementResource,
		"portal":          "",
		"gallery":         "",
		"authentication": map[string]any{
			"loginEndpoint": login, "audiences": audiences, "tenant": "adfs", "identityProvider": "ADFS",
		},
		"suffixes": map[string]any{"keyVaultDns": ep.Apex()},
	}})
}
