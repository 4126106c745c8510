package kvhttp

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/cofferhq/coffer/internal/access"
	"github.com/cofferhq/coffer/internal/httpjson"
	"github.com/cofferhq/coffer/internal/object"
	"github.com/cofferhq/coffer/internal/secret"
)

const pageSize = 25

type attributesOut struct {
	Enabled         bool   `json:"enabled"`
	NotBefore       *int64 `json:"nbf,omitempty"`
	Expires         *int64 `json:"exp,omitempty"`
	Created         int64  `json:"created"`
	Updated         int64  `json:"updated"`
	RecoveryLevel   string `json:"recoveryLevel"`
	RecoverableDays int    `json:"recoverableDays"`
}

type secretOut struct {
	Value              *string           `json:"value,omitempty"`
	ID                 string            `json:"id"`
	ContentType        string            `json:"contentType,omitempty"`
	Attributes         attributesOut     `json:"attributes"`
	Tags               map[string]string `json:"tags,omitempty"`
	KID                string            `json:"kid,omitempty"`
	Managed            bool              `json:"managed,omitempty"`
	PreviousVersion    string            `json:"previousVersion,omitempty"`
	RecoveryID         string            `json:"recoveryId,omitempty"`
	DeletedDate        int64             `json:"deletedDate,omitempty"`
	ScheduledPurgeDate int64             `json:"scheduledPurgeDate,omitempty"`
}

type listOut struct {
	Value    []secretOut `json:"value"`
	NextLink *string     `json:"nextLink"`
}

type attributesIn struct {
	Enabled   *bool  `json:"enabled"`
	NotBefore *int64 `json:"nbf"`
	Expires   *int64 `json:"exp"`
}

type secretIn struct {
	Value       *string           `json:"value"`
	ContentType *string           `json:"contentType"`
	Attributes  *attributesIn     `json:"attributes"`
	Tags        map[string]string `json:"tags"`
}

type blobIO struct {
	Value string `json:"value"`
}

type secretRoutes struct{ h *Handler }

func (s secretRoutes) out(c *call, sec secret.Secret, withValue bool) secretOut {
	base := s.h.ep.VaultBase(c.vault.Name)
	o := secretOut{
		ID:          base + "/secrets/" + sec.Name,
		ContentType: sec.ContentType,
		Tags:        sec.Tags,
		KID:         sec.KID,
		Managed:     sec.Managed,
		Attributes: attributesOut{
			Enabled: sec.Attributes.Enabled, NotBefore: sec.Attributes.NotBefore, Expires: sec.Attributes.Expires,
			Created: sec.Attributes.Created, Updated: sec.Attributes.Updated,
			RecoveryLevel: c.vault.RecoveryLevel(), RecoverableDays: c.vault.RetentionDays,
		},
	}
	if sec.Version != "" {
		o.ID += "/" + sec.Version
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
	o.RecoveryID = s.h.ep.VaultBase(c.vault.Name) + "/deletedsecrets/" + d.Name
	o.DeletedDate, o.ScheduledPurgeDate = d.DeletedDate, d.ScheduledPurge
	return o
}

// authorize checks that the caller may perform op on object ("" for
// vault-wide operations) and, if so, returns the request's call.
func (s secretRoutes) authorize(w http.ResponseWriter, r *http.Request, op access.Operation, object string) (*call, bool) {
	c := callOf(r)
	c.audit.Operation = op.DataAction
	if object != "" {
		c.audit.Object = string(op.Kind) + "/" + object
		c.audit.Version = r.PathValue("version")
	}
	if err := s.h.access.Data(c.vault, c.principal, op, object); err != nil {
		c.audit.Decision = "deny"
		s.h.fail(w, r, access.Secrets, err)
		return nil, false
	}
	c.audit.Decision = "allow"
	return c, true
}

// readJSON reads a body of at most limit bytes into v.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return object.Invalidf("The request body is empty; this operation needs a JSON body.")
	}
	return json.Unmarshal(body, v)
}

// page reads $skiptoken and maxresults.
func page(r *http.Request) (after string, limit int, err error) {
	q := r.URL.Query()
	limit = pageSize
	if m := q.Get("maxresults"); m != "" {
		n, perr := strconv.Atoi(m)
		if perr != nil || n < 1 || n > pageSize {
			return "", 0, object.Invalidf("maxresults must be an integer from 1 to %d, got %q.", pageSize, m)
		}
		limit = n
	}
	if t := q.Get("$skiptoken"); t != "" {
		b, derr := base64.RawURLEncoding.DecodeString(t)
		if derr != nil {
			return "", 0, object.Invalidf("The $skiptoken is not one this server issued.")
		}
		after = string(b)
	}
	return after, limit, nil
}

// nextLink is the absolute URL of the next page, or nil at the end.
func (s secretRoutes) nextLink(c *call, r *http.Request, next string) *string {
	if next == "" {
		return nil
	}
	q := url.Values{}
	q.Set("api-version", c.apiVersion)
	q.Set("$skiptoken", base64.RawURLEncoding.EncodeToString([]byte(next)))
	if m := r.URL.Query().Get("maxresults"); m != "" {
		q.Set("maxresults", m)
	}
	link := s.h.ep.VaultBase(c.vault.Name) + r.URL.Path + "?" + q.Encode()
	return &link
}

// serve runs one operation on the secret named in the path: it checks the
// caller may perform op, runs fn, and writes its result (or, for a nil
// result, 204 No Content).
func (s secretRoutes) serve(w http.ResponseWriter, r *http.Request, op access.Operation, fn func(c *call) (any, error)) {
	s.serveOn(w, r, op, r.PathValue("name"), fn)
}

// serveOn is serve with the object named explicitly ("" for the vault).
func (s secretRoutes) serveOn(w http.ResponseWriter, r *http.Request, op access.Operation, object string, fn func(c *call) (any, error)) {
	c, ok := s.authorize(w, r, op, object)
	if !ok {
		return
	}
	out, err := fn(c)
	switch {
	case err != nil:
		s.h.fail(w, r, access.Secrets, err)
	case out == nil:
		w.WriteHeader(http.StatusNoContent)
	default:
		httpjson.Write(w, http.StatusOK, out)
	}
}

// listPage serves one page of a list operation; fetch returns the page in
// wire form and the cursor of the next page.
func (s secretRoutes) listPage(w http.ResponseWriter, r *http.Request, fetch func(c *call, after string, limit int) ([]secretOut, string, error)) {
	s.serveOn(w, r, access.SecretList, "", func(c *call) (any, error) {
		after, limit, err := page(r)
		if err != nil {
			return nil, err
		}
		items, next, err := fetch(c, after, limit)
		if err != nil {
			return nil, err
		}
		if items == nil {
			items = []secretOut{}
		}
		return listOut{Value: items, NextLink: s.nextLink(c, r, next)}, nil
	})
}

// itemID is a list item's id: the object without a version, as Azure lists it.
func (s secretRoutes) itemID(c *call, name string) string {
	return s.h.ep.VaultBase(c.vault.Name) + "/secrets/" + name
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
		sec, err := s.h.secrets.Get(r.Context(), c.vault, r.PathValue("name"), r.PathValue("version"))
		return s.out(c, sec, true), err
	})
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
	s.listPage(w, r, func(c *call, after string, limit int) ([]secretOut, string, error) {
		items, next, err := s.h.secrets.List(r.Context(), c.vault, after, limit)
		out := make([]secretOut, len(items))
		for i, it := range items {
			out[i] = s.out(c, it, false)
			out[i].ID = s.itemID(c, it.Name)
		}
		return out, next, err
	})
}

func (s secretRoutes) versions(w http.ResponseWriter, r *http.Request) {
	s.listPage(w, r, func(c *call, after string, limit int) ([]secretOut, string, error) {
		items, next, err := s.h.secrets.ListVersions(r.Context(), c.vault, r.PathValue("name"), after, limit)
		out := make([]secretOut, len(items))
		for i, it := range items {
			out[i] = s.out(c, it, false)
		}
		return out, next, err
	})
}

func (s secretRoutes) listDeleted(w http.ResponseWriter, r *http.Request) {
	s.listPage(w, r, func(c *call, after string, limit int) ([]secretOut, string, error) {
		items, next, err := s.h.secrets.ListDeleted(r.Context(), c.vault, after, limit)
		out := make([]secretOut, len(items))
		for i, it := range items {
			out[i] = s.deletedOut(c, it)
			out[i].ID = s.itemID(c, it.Name)
		}
		return out, next, err
	})
}

func (s secretRoutes) getDeleted(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, access.SecretList, func(c *call) (any, error) {
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
		blob, err := s.h.secrets.Backup(r.Context(), c.vault, r.PathValue("name"))
		return blobIO{Value: base64.RawURLEncoding.EncodeToString(blob)}, err
	})
}

func (s secretRoutes) restore(w http.ResponseWriter, r *http.Request) {
	s.serveOn(w, r, access.SecretRestore, "", func(c *call) (any, error) {
		var in blobIO
		if err := readJSON(w, r, maxRestoreBody, &in); err != nil {
			return nil, err
		}
		blob, err := decodeBlob(in.Value)
		if err != nil {
			return nil, err
		}
		sec, err := s.h.secrets.Restore(r.Context(), c.vault, blob)
		return s.out(c, sec, false), err
	})
}

// decodeBlob accepts base64url with or without padding, as Azure does.
func decodeBlob(v string) ([]byte, error) {
	if v == "" {
		return nil, object.Invalidf("The request body must contain the backup blob in 'value'.")
	}
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(v); err == nil {
			return b, nil
		}
	}
	return nil, object.Invalidf("The backup blob in 'value' is not valid base64url.")
}
