package kvhttp

import (
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
)

type certOut struct {
	ID          string            `json:"id"`
	KID         string            `json:"kid,omitempty"`
	SID         string            `json:"sid,omitempty"`
	X5T         string            `json:"x5t,omitempty"`
	CER         []byte            `json:"cer,omitempty"`
	ContentType string            `json:"contentType,omitempty"`
	Attributes  attributesOut     `json:"attributes"`
	Policy      *cert.Policy      `json:"policy,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	deletedInfo
}

// certItemOut is a certificate in a list: its id and thumbprint.
type certItemOut struct {
	ID         string            `json:"id"`
	X5T        string            `json:"x5t,omitempty"`
	Attributes attributesOut     `json:"attributes"`
	Tags       map[string]string `json:"tags,omitempty"`
	deletedInfo
}

type certAttrsIn struct {
	Enabled *bool `json:"enabled"`
}

type certIn struct {
	Policy     *cert.Policy      `json:"policy"`
	Attributes *certAttrsIn      `json:"attributes"`
	Tags       map[string]string `json:"tags"`
	// import
	Value *string `json:"value"`
	Pwd   string  `json:"pwd"`
	// merge
	X5C [][]byte `json:"x5c"`
	// pending
	CancellationRequested *bool `json:"cancellation_requested"`
}

func (in certIn) enabled() *bool {
	if in.Attributes == nil {
		return nil
	}
	return in.Attributes.Enabled
}

type opOutCert struct {
	ID string `json:"id"`
	cert.Operation
	Target string `json:"target,omitempty"`
}

type certRoutes struct{ base }

func (cr certRoutes) register(m *http.ServeMux) {
	cm := http.NewServeMux()
	cm.HandleFunc("GET /certificates", cr.list)
	cm.HandleFunc("GET /certificates/{$}", cr.list)
	cm.HandleFunc("POST /certificates/{name}/create", cr.create)
	cm.HandleFunc("POST /certificates/{name}/import", cr.importCert)
	cm.HandleFunc("GET /certificates/{name}", cr.get)
	cm.HandleFunc("GET /certificates/{name}/{$}", cr.get)
	cm.HandleFunc("GET /certificates/{name}/{version}", cr.get)
	cm.HandleFunc("PATCH /certificates/{name}", cr.update)
	cm.HandleFunc("PATCH /certificates/{name}/{$}", cr.update)
	cm.HandleFunc("PATCH /certificates/{name}/{version}", cr.update)
	cm.HandleFunc("DELETE /certificates/{name}", cr.delete)
	cm.HandleFunc("GET /certificates/{name}/versions", cr.versions)
	cm.HandleFunc("GET /certificates/{name}/policy", cr.getPolicy)
	cm.HandleFunc("PATCH /certificates/{name}/policy", cr.updatePolicy)
	cm.HandleFunc("GET /certificates/{name}/pending", cr.getOp)
	cm.HandleFunc("PATCH /certificates/{name}/pending", cr.cancelOp)
	cm.HandleFunc("DELETE /certificates/{name}/pending", cr.deleteOp)
	cm.HandleFunc("POST /certificates/{name}/pending/merge", cr.merge)
	cm.HandleFunc("POST /certificates/{name}/backup", cr.backup)
	cm.HandleFunc("POST /certificates/restore", cr.restore)
	cm.HandleFunc("/", notFound)
	cm.HandleFunc("GET /certificates/contacts", cr.getContacts)
	cm.HandleFunc("PUT /certificates/contacts", cr.setContacts)
	cm.HandleFunc("DELETE /certificates/contacts", cr.deleteContacts)
	// Issuer routes would clash with /certificates/{name}/{version} in the
	// mux's precedence rules, so they are told apart here, by prefix.
	im := http.NewServeMux()
	im.HandleFunc("GET /certificates/issuers", cr.listIssuers)
	im.HandleFunc("GET /certificates/issuers/{$}", cr.listIssuers)
	im.HandleFunc("GET /certificates/issuers/{issuer}", cr.getIssuer)
	im.HandleFunc("PUT /certificates/issuers/{issuer}", cr.setIssuer)
	im.HandleFunc("PATCH /certificates/issuers/{issuer}", cr.setIssuer)
	im.HandleFunc("DELETE /certificates/issuers/{issuer}", cr.deleteIssuer)
	im.HandleFunc("/", notFound)
	dispatch := func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == "/certificates/issuers" || strings.HasPrefix(p, "/certificates/issuers/") {
			im.ServeHTTP(w, r)
			return
		}
		cm.ServeHTTP(w, r)
	}
	m.HandleFunc("/certificates", dispatch)
	m.HandleFunc("/certificates/", dispatch)
	m.HandleFunc("GET /deletedcertificates", cr.listDeleted)
	m.HandleFunc("GET /deletedcertificates/{$}", cr.listDeleted)
	m.HandleFunc("GET /deletedcertificates/{name}", cr.getDeleted)
	m.HandleFunc("DELETE /deletedcertificates/{name}", cr.purge)
	m.HandleFunc("POST /deletedcertificates/{name}/recover", cr.recover)
}

func (cr certRoutes) policyOut(c *call, name string, p *cert.Policy) *cert.Policy {
	if p == nil {
		return nil
	}
	out := *p
	out.ID = cr.id(c, "certificates", name, "policy")
	return &out
}

func (cr certRoutes) out(c *call, ct cert.Certificate) certOut {
	return certOut{
		ID:  cr.id(c, "certificates", ct.Name, ct.Version),
		KID: cr.id(c, "keys", ct.Name, ct.Version), SID: cr.id(c, "secrets", ct.Name, ct.Version),
		X5T: base64.RawURLEncoding.EncodeToString(ct.X5T), CER: ct.CER, ContentType: ct.ContentType,
		Attributes: cr.attributes(c, ct.Attributes), Policy: cr.policyOut(c, ct.Name, ct.Policy), Tags: ct.Tags,
	}
}

func (cr certRoutes) deletedOut(c *call, d cert.Deleted) certOut {
	o := cr.out(c, d.Certificate)
	o.deletedInfo = cr.deleted(c, "certificates", d.Name, d.DeletedDate, d.ScheduledPurge)
	return o
}

func (cr certRoutes) item(c *call, ct cert.Certificate, version string) certItemOut {
	return certItemOut{ID: cr.id(c, "certificates", ct.Name, version), X5T: base64.RawURLEncoding.EncodeToString(ct.X5T),
		Attributes: cr.attributes(c, ct.Attributes), Tags: ct.Tags}
}

func (cr certRoutes) opOut(c *call, name string, op cert.Operation) opOutCert {
	o := opOutCert{ID: cr.id(c, "certificates", name, "pending"), Operation: op}
	if op.Status == cert.Completed {
		o.Target = cr.id(c, "certificates", name, "")
	}
	return o
}

func readCertIn(w http.ResponseWriter, r *http.Request) (certIn, error) {
	var in certIn
	err := readJSON(w, r, maxCertBody, &in)
	return in, err
}

func (cr certRoutes) create(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertCreate, func(c *call) (any, error) {
		in, err := readCertIn(w, r)
		if err != nil {
			return nil, err
		}
		name := r.PathValue("name")
		op, err := cr.h.certs.Create(r.Context(), c.vault, name, in.Policy, in.enabled(), in.Tags)
		if err != nil {
			return nil, err
		}
		out := cr.opOut(c, name, op)
		w.Header().Set("Location", out.ID+"?api-version="+c.apiVersion)
		w.Header().Set("Retry-After", "1")
		return reply{http.StatusAccepted, out}, nil
	})
}

func (cr certRoutes) importCert(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertImport, func(c *call) (any, error) {
		in, err := readCertIn(w, r)
		if err != nil {
			return nil, err
		}
		if in.Value == nil || *in.Value == "" {
			return nil, object.Invalidf("The request body must contain the certificate to import in 'value': a base64 PFX, or PEM with the private key and chain.")
		}
		ct, err := cr.h.certs.Import(r.Context(), c.vault, r.PathValue("name"), []byte(*in.Value), in.Pwd, in.Policy, in.enabled(), in.Tags)
		return cr.out(c, ct), err
	})
}

func (cr certRoutes) get(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertGet, func(c *call) (any, error) {
		ct, err := cr.h.certs.Get(r.Context(), c.vault, r.PathValue("name"), r.PathValue("version"))
		if err != nil {
			return nil, err
		}
		return conditional(w, r, certETag(ct), cr.out(c, ct)), nil
	})
}

func (cr certRoutes) update(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertUpdate, func(c *call) (any, error) {
		in, err := readCertIn(w, r)
		if err != nil {
			return nil, err
		}
		name := r.PathValue("name")
		if in.Policy != nil {
			if _, err := cr.h.certs.UpdatePolicy(r.Context(), c.vault, name, *in.Policy); err != nil {
				return nil, err
			}
		}
		ct, err := cr.h.certs.Update(r.Context(), c.vault, name, r.PathValue("version"), in.enabled(), in.Tags)
		return cr.out(c, ct), err
	})
}

func (cr certRoutes) getPolicy(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertGet, func(c *call) (any, error) {
		p, err := cr.h.certs.GetPolicy(r.Context(), c.vault, r.PathValue("name"))
		return cr.policyOut(c, r.PathValue("name"), &p), err
	})
}

func (cr certRoutes) updatePolicy(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertUpdate, func(c *call) (any, error) {
		var in cert.Policy
		if err := readJSON(w, r, maxCertBody, &in); err != nil {
			return nil, err
		}
		p, err := cr.h.certs.UpdatePolicy(r.Context(), c.vault, r.PathValue("name"), in)
		return cr.policyOut(c, r.PathValue("name"), &p), err
	})
}

func (cr certRoutes) getOp(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertGet, func(c *call) (any, error) {
		op, err := cr.h.certs.GetOperation(r.Context(), c.vault, r.PathValue("name"))
		return cr.opOut(c, r.PathValue("name"), op), err
	})
}

func (cr certRoutes) cancelOp(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertUpdate, func(c *call) (any, error) {
		in, err := readCertIn(w, r)
		if err != nil {
			return nil, err
		}
		if in.CancellationRequested == nil {
			return nil, object.Invalidf("The request body must set 'cancellation_requested' to true to cancel the operation.")
		}
		name := r.PathValue("name")
		var op cert.Operation
		if *in.CancellationRequested {
			op, err = cr.h.certs.CancelOperation(r.Context(), c.vault, name)
		} else {
			op, err = cr.h.certs.GetOperation(r.Context(), c.vault, name)
		}
		return cr.opOut(c, name, op), err
	})
}

func (cr certRoutes) deleteOp(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertDelete, func(c *call) (any, error) {
		op, err := cr.h.certs.DeleteOperation(r.Context(), c.vault, r.PathValue("name"))
		return cr.opOut(c, r.PathValue("name"), op), err
	})
}

func (cr certRoutes) merge(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertCreate, func(c *call) (any, error) {
		in, err := readCertIn(w, r)
		if err != nil {
			return nil, err
		}
		ct, err := cr.h.certs.Merge(r.Context(), c.vault, r.PathValue("name"), in.X5C, in.enabled(), in.Tags)
		if err != nil {
			return nil, err
		}
		return reply{http.StatusCreated, cr.out(c, ct)}, nil
	})
}

func (cr certRoutes) delete(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertDelete, func(c *call) (any, error) {
		d, err := cr.h.certs.Delete(r.Context(), c.vault, r.PathValue("name"))
		return cr.deletedOut(c, d), err
	})
}

func (cr certRoutes) list(w http.ResponseWriter, r *http.Request) {
	listPage(cr.base, w, r, access.CertList, func(c *call, after string, limit int) ([]certItemOut, string, error) {
		items, next, err := cr.h.certs.List(r.Context(), c.vault, after, limit)
		out := make([]certItemOut, len(items))
		for i, it := range items {
			out[i] = cr.item(c, it, "")
		}
		return out, next, err
	})
}

func (cr certRoutes) versions(w http.ResponseWriter, r *http.Request) {
	listPage(cr.base, w, r, access.CertList, func(c *call, after string, limit int) ([]certItemOut, string, error) {
		items, next, err := cr.h.certs.ListVersions(r.Context(), c.vault, r.PathValue("name"), after, limit)
		out := make([]certItemOut, len(items))
		for i, it := range items {
			out[i] = cr.item(c, it, it.Version)
		}
		return out, next, err
	})
}

func (cr certRoutes) listDeleted(w http.ResponseWriter, r *http.Request) {
	listPage(cr.base, w, r, access.CertList, func(c *call, after string, limit int) ([]certItemOut, string, error) {
		items, next, err := cr.h.certs.ListDeleted(r.Context(), c.vault, after, limit)
		out := make([]certItemOut, len(items))
		for i, it := range items {
			out[i] = cr.item(c, it.Certificate, "")
			out[i].deletedInfo = cr.deleted(c, "certificates", it.Name, it.DeletedDate, it.ScheduledPurge)
		}
		return out, next, err
	})
}

func (cr certRoutes) getDeleted(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertGet, func(c *call) (any, error) {
		d, err := cr.h.certs.GetDeleted(r.Context(), c.vault, r.PathValue("name"))
		return cr.deletedOut(c, d), err
	})
}

func (cr certRoutes) recover(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertRecover, func(c *call) (any, error) {
		ct, err := cr.h.certs.Recover(r.Context(), c.vault, r.PathValue("name"))
		return cr.out(c, ct), err
	})
}

func (cr certRoutes) purge(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertPurge, func(c *call) (any, error) {
		return nil, cr.h.certs.Purge(r.Context(), c.vault, r.PathValue("name"))
	})
}

func (cr certRoutes) backup(w http.ResponseWriter, r *http.Request) {
	cr.serve(w, r, access.CertBackup, func(c *call) (any, error) {
		return backupOut(cr.h.certs.Backup(r.Context(), c.vault, r.PathValue("name")))
	})
}

func (cr certRoutes) restore(w http.ResponseWriter, r *http.Request) {
	cr.serveOn(w, r, access.CertRestore, "", func(c *call) (any, error) {
		blob, err := restoreBlob(w, r)
		if err != nil {
			return nil, err
		}
		ct, err := cr.h.certs.Restore(r.Context(), c.vault, blob)
		return cr.out(c, ct), err
	})
}
