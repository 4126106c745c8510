package kvhttp

import (
	"net/http"

	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

type secretOut struct {
	Value           *string           `json:"value,omitempty"`
	ID              string            `json:"id"`
	ContentType     string            `json:"contentType,omitempty"`
	Attributes      attributesOut     `json:"attributes"`
	Tags            map[string]string `json:"tags,omitempty"`
	KID             string            `json:"kid,omitempty"`
	Managed         bool              `json:"managed,omitempty"`
	PreviousVersion string            `json:"previousVersion,omitempty"`
	deletedInfo
}

type secretIn struct {
	Value       *string           `json:"value"`
	ContentType *string           `json:"contentType"`
	Attributes  *attributesIn     `json:"attributes"`
	Tags        map[string]string `json:"tags"`
}

type secretRoutes struct{ base }

func (s secretRoutes) register(m *http.ServeMux) {
	m.HandleFunc("GET /secrets", s.list)
	m.HandleFunc("GET /secrets/{$}", s.list)
	m.HandleFunc("PUT /secrets/{name}", s.set)
	m.HandleFunc("GET /secrets/{name}", s.get)
	m.HandleFunc("GET /secrets/{name}/{$}", s.get)
	m.HandleFunc("GET /secrets/{name}/{version}", s.get)
	m.HandleFunc("PATCH /secrets/{name}", s.update)
	m.HandleFunc("PATCH /secrets/{name}/{$}", s.update)
	m.HandleFunc("PATCH /secrets/{name}/{version}", s.update)
	m.HandleFunc("DELETE /secrets/{name}", s.delete)
	m.HandleFunc("GET /secrets/{name}/versions", s.versions)
	m.HandleFunc("POST /secrets/{name}/backup", s.backup)
	m.HandleFunc("POST /secrets/restore", s.restore)
	m.HandleFunc("GET /deletedsecrets", s.listDeleted)
	m.HandleFunc("GET /deletedsecrets/{$}", s.listDeleted)
	m.HandleFunc("GET /deletedsecrets/{name}", s.getDeleted)
	m.HandleFunc("DELETE /deletedsecrets/{name}", s.purge)
	m.HandleFunc("POST /deletedsecrets/{name}/recover", s.recover)
}

func (s secretRoutes) out(c *call, sec secret.Secret, withValue bool) secretOut {
	o := secretOut{
		ID: s.id(c, "secrets", sec.Name, sec.Version), ContentType: sec.ContentType, Tags: sec.Tags,
		Managed: sec.Managed, Attributes: s.attributes(c, sec.Attributes),
	}
	if sec.Managed {
		// A certificate's secret and key share its version.
		o.KID = s.id(c, "keys", sec.Name, sec.Version)
	}
	if withValue {
		o.Value = &sec.Value
	}
	if hasPreviousVersion(c.apiVersion) {
		o.PreviousVersion = sec.PreviousVersion
	}
	return o
}

func (s secretRoutes) deletedOut(c *call, d secret.Deleted) secretOut {
	o := s.out(c, d.Secret, false)
	o.deletedInfo = s.deleted(c, "secrets", d.Name, d.DeletedDate, d.ScheduledPurge)
	return o
}

func readSecretIn(w http.ResponseWriter, r *http.Request) (secretIn, error) {
	var in secretIn
	err := readJSON(w, r, maxSecretBody, &in)
	return in, err
}

func (s secretRoutes) set(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretSet, func(c *call) (any, error) {
		in, err := readSecretIn(w, r)
		if err != nil {
			return nil, err
		}
		p := secret.SetParams{Value: in.Value, ContentType: in.ContentType, Tags: in.Tags}
		if a := in.Attributes; a != nil {
			p.Enabled, p.NotBefore, p.Expires = a.Enabled, a.NotBefore, a.Expires
		}
		sec, err := s.h.secrets.Set(r.Context(), c.vault, r.PathValue("name"), p)
		return s.out(c, sec, true), err
	})
}

func (s secretRoutes) get(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretGet, func(c *call) (any, error) {
		out := queryGet(c.rawQuery, "outContentType")
		sec, err := s.h.secrets.Get(r.Context(), c.vault, r.PathValue("name"), r.PathValue("version"), out)
		if err != nil {
			return nil, err
		}
		enc := s.encoded(c, sec, out)
		return conditional(w, r, enc.etag, enc), nil
	})
}

// encodedSecret is a secret read's response body, encoded, and its ETag.
type encodedSecret struct {
	shape secretShape
	etag  string
	body  []byte
}

// secretShape is what a read's response depends on besides the version
// and its object's head.
type secretShape struct {
	vault          *vault.Vault // replaced, never changed, when its settings change
	outContentType string
	previous       bool // the api-version has previousVersion
}

// AppendJSON makes the encoded body an httpjson.Write body.
func (e *encodedSecret) AppendJSON(b []byte) []byte { return append(b, e.body...) }

// encoded returns a read's response and ETag, from the version's memo
// when an earlier read of it encoded them in the same shape. The memo
// goes when the object changes (see object.Memo), so it is never staler
// than the read itself; the read, its checks (enabled, validity) and its
// authorization still run on every request. Encoding and hashing were a
// third of a hot GET's own work.
func (s secretRoutes) encoded(c *call, sec secret.Secret, out string) *encodedSecret {
	shape := secretShape{vault: c.vault, outContentType: out, previous: hasPreviousVersion(c.apiVersion)}
	if e, ok := sec.Memo.Load().(*encodedSecret); ok && e.shape == shape {
		return e
	}
	o := s.out(c, sec, true)
	e := &encodedSecret{shape: shape, etag: secretETag(sec, out), body: o.AppendJSON(nil)}
	sec.Memo.Store(e, len(e.body)+len(e.etag))
	return e
}

func (s secretRoutes) update(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretUpdate, func(c *call) (any, error) {
		in, err := readSecretIn(w, r)
		if err != nil {
			return nil, err
		}
		if in.Value != nil {
			return nil, object.Invalidf("A secret's value cannot be updated; set a new version with PUT /secrets/%s instead.", r.PathValue("name"))
		}
		p := secret.UpdateParams{ContentType: in.ContentType, Tags: in.Tags}
		if a := in.Attributes; a != nil {
			p.Enabled, p.NotBefore, p.Expires = a.Enabled, a.NotBefore, a.Expires
		}
		sec, err := s.h.secrets.Update(r.Context(), c.vault, r.PathValue("name"), r.PathValue("version"), p)
		return s.out(c, sec, false), err
	})
}

func (s secretRoutes) delete(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretDelete, func(c *call) (any, error) {
		d, err := s.h.secrets.Delete(r.Context(), c.vault, r.PathValue("name"))
		return s.deletedOut(c, d), err
	})
}

func (s secretRoutes) list(w http.ResponseWriter, r *http.Request) {
	listPage(s.base, w, r, access.SecretList, func(c *call, after string, limit int) ([]secretOut, string, error) {
		items, next, err := s.h.secrets.List(r.Context(), c.vault, after, limit)
		out := make([]secretOut, len(items))
		for i, it := range items {
			out[i] = s.out(c, it, false)
			out[i].ID = s.id(c, "secrets", it.Name, "")
		}
		return out, next, err
	})
}

func (s secretRoutes) versions(w http.ResponseWriter, r *http.Request) {
	listPage(s.base, w, r, access.SecretList, func(c *call, after string, limit int) ([]secretOut, string, error) {
		items, next, err := s.h.secrets.ListVersions(r.Context(), c.vault, r.PathValue("name"), after, limit)
		out := make([]secretOut, len(items))
		for i, it := range items {
			out[i] = s.out(c, it, false)
		}
		return out, next, err
	})
}

func (s secretRoutes) listDeleted(w http.ResponseWriter, r *http.Request) {
	listPage(s.base, w, r, access.SecretList, func(c *call, after string, limit int) ([]secretOut, string, error) {
		items, next, err := s.h.secrets.ListDeleted(r.Context(), c.vault, after, limit)
		out := make([]secretOut, len(items))
		for i, it := range items {
			out[i] = s.deletedOut(c, it)
			out[i].ID = s.id(c, "secrets", it.Name, "")
		}
		return out, next, err
	})
}

func (s secretRoutes) getDeleted(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretGetDeleted, func(c *call) (any, error) {
		d, err := s.h.secrets.GetDeleted(r.Context(), c.vault, r.PathValue("name"))
		return s.deletedOut(c, d), err
	})
}

func (s secretRoutes) recover(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretRecover, func(c *call) (any, error) {
		sec, err := s.h.secrets.Recover(r.Context(), c.vault, r.PathValue("name"))
		return s.out(c, sec, false), err
	})
}

func (s secretRoutes) purge(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretPurge, func(c *call) (any, error) {
		return nil, s.h.secrets.Purge(r.Context(), c.vault, r.PathValue("name"))
	})
}

func (s secretRoutes) backup(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretBackup, func(c *call) (any, error) {
		return backupOut(s.h.secrets.Backup(r.Context(), c.vault, r.PathValue("name")))
	})
}

func (s secretRoutes) restore(w http.ResponseWriter, r *http.Request) {
	s.serveOn(w, r, access.SecretRestore, "", func(c *call) (any, error) {
		blob, err := restoreBlob(w, r)
		if err != nil {
			return nil, err
		}
		sec, err := s.h.secrets.Restore(r.Context(), c.vault, blob)
		return s.out(c, sec, false), err
	})
}
