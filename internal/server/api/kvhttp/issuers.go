package kvhttp

import (
	"net/http"

	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
)

// issuerItemOut is an issuer in a list: its id and provider.
type issuerItemOut struct {
	ID       string `json:"id"`
	Provider string `json:"provider"`
}

func (cr certRoutes) issuerID(c *call, name string) string {
	return cr.h.ep.VaultBase(c.vault.Name) + "/certificates/issuers/" + name
}

// issuerOn serves an issuer operation, authorized on the vault (issuers
// are vault-wide, not objects) and audited under the issuer's name.
func (cr certRoutes) issuerOn(w http.ResponseWriter, r *http.Request, op access.Operation, fn func(c *call, name string) (cert.Issuer, error)) {
	name := r.PathValue("issuer")
	cr.serveOn(w, r, op, "", func(c *call) (any, error) {
		c.audit.Object = "certificates/issuers/" + name
		i, err := fn(c, name)
		if err != nil {
			return nil, err
		}
		i.ID = cr.issuerID(c, name)
		return i, nil
	})
}

func (cr certRoutes) getIssuer(w http.ResponseWriter, r *http.Request) {
	cr.issuerOn(w, r, access.CertGetIssuers, func(c *call, name string) (cert.Issuer, error) {
		return cr.h.certs.GetIssuer(r.Context(), c.vault, name)
	})
}

func (cr certRoutes) setIssuer(w http.ResponseWriter, r *http.Request) {
	cr.issuerOn(w, r, access.CertSetIssuers, func(c *call, name string) (cert.Issuer, error) {
		var in cert.Issuer
		if err := readJSON(w, r, maxEmptyBody*4, &in); err != nil {
			return cert.Issuer{}, err
		}
		return cr.h.certs.SetIssuer(r.Context(), c.vault, name, in, r.Method == http.MethodPatch)
	})
}

func (cr certRoutes) deleteIssuer(w http.ResponseWriter, r *http.Request) {
	cr.issuerOn(w, r, access.CertDeleteIssuers, func(c *call, name string) (cert.Issuer, error) {
		return cr.h.certs.DeleteIssuer(r.Context(), c.vault, name)
	})
}

func (cr certRoutes) listIssuers(w http.ResponseWriter, r *http.Request) {
	listPage(cr.base, w, r, access.CertListIssuers, func(c *call, after string, limit int) ([]issuerItemOut, string, error) {
		items, next, err := cr.h.certs.ListIssuers(r.Context(), c.vault, after, limit)
		out := make([]issuerItemOut, len(items))
		for i, it := range items {
			out[i] = issuerItemOut{ID: cr.issuerID(c, it.Name), Provider: it.Provider}
		}
		return out, next, err
	})
}

func (cr certRoutes) contactsOn(w http.ResponseWriter, r *http.Request, fn func(c *call) (cert.Contacts, error)) {
	cr.serveOn(w, r, access.CertManageContacts, "", func(c *call) (any, error) {
		c.audit.Object = "certificates/contacts"
		out, err := fn(c)
		if err != nil {
			return nil, err
		}
		out.ID = cr.h.ep.VaultBase(c.vault.Name) + "/certificates/contacts"
		return out, nil
	})
}

func (cr certRoutes) getContacts(w http.ResponseWriter, r *http.Request) {
	cr.contactsOn(w, r, func(c *call) (cert.Contacts, error) { return cr.h.certs.GetContacts(r.Context(), c.vault) })
}

func (cr certRoutes) setContacts(w http.ResponseWriter, r *http.Request) {
	cr.contactsOn(w, r, func(c *call) (cert.Contacts, error) {
		var in cert.Contacts
		if err := readJSON(w, r, maxCertBody, &in); err != nil {
			return cert.Contacts{}, err
		}
		return cr.h.certs.SetContacts(r.Context(), c.vault, in)
	})
}

func (cr certRoutes) deleteContacts(w http.ResponseWriter, r *http.Request) {
	cr.contactsOn(w, r, func(c *call) (cert.Contacts, error) { return cr.h.certs.DeleteContacts(r.Context(), c.vault) })
}
