package kvhttp

import (
	"net/http"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/api/httpjson"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
)

type keyOut struct {
	Key        keyops.JWK        `json:"key"`
	Attributes attributesOut     `json:"attributes"`
	Tags       map[string]string `json:"tags,omitempty"`
	Managed    bool              `json:"managed,omitempty"`
	deletedInfo
}

// keyItemOut is a key in a list: its kid, not its material.
type keyItemOut struct {
	KID        string            `json:"kid"`
	Attributes attributesOut     `json:"attributes"`
	Tags       map[string]string `json:"tags,omitempty"`
	Managed    bool              `json:"managed,omitempty"`
	deletedInfo
}

type keyAttrsIn struct {
	attributesIn
	Exportable *bool `json:"exportable"`
}

type keyIn struct {
	Kty            string            `json:"kty"`
	KeySize        int               `json:"key_size"`
	Crv            string            `json:"crv"`
	PublicExponent int               `json:"public_exponent"`
	KeyOps         []string          `json:"key_ops"`
	Attributes     *keyAttrsIn       `json:"attributes"`
	Tags           map[string]string `json:"tags"`
	ReleasePolicy  *struct{}         `json:"release_policy"`
	Key            *keyops.JWK       `json:"key"`
	HSM            *bool             `json:"Hsm"`
}

func (in keyIn) attrs() (key.Attrs, error) {
	a := key.Attrs{Tags: in.Tags, KeyOps: in.KeyOps}
	if in.ReleasePolicy != nil {
		return a, object.Invalidf("Key release policies need attestation, which Coffer does not offer; create the key without release_policy.")
	}
	if at := in.Attributes; at != nil {
		if at.Exportable != nil && *at.Exportable {
			return a, object.Invalidf("Exportable keys need a release policy, which Coffer does not offer; create the key with exportable false.")
		}
		a.Enabled, a.NotBefore, a.Expires = at.Enabled, at.NotBefore, at.Expires
	}
	return a, nil
}

type opIn struct {
	Alg    string     `json:"alg"`
	Value  keyops.B64 `json:"value"`
	IV     keyops.B64 `json:"iv"`
	AAD    keyops.B64 `json:"aad"`
	Tag    keyops.B64 `json:"tag"`
	Digest keyops.B64 `json:"digest"`
}

type opOut struct {
	KID   string     `json:"kid"`
	Value keyops.B64 `json:"value"`
	IV    keyops.B64 `json:"iv,omitempty"`
	Tag   keyops.B64 `json:"tag,omitempty"`
	AAD   keyops.B64 `json:"aad,omitempty"`
}

type keyRoutes struct{ base }

func (k keyRoutes) register(m *http.ServeMux) {
	m.HandleFunc("GET /keys", k.list)
	m.HandleFunc("GET /keys/{$}", k.list)
	m.HandleFunc("POST /keys/{name}/create", k.create)
	m.HandleFunc("PUT /keys/{name}", k.importKey)
	m.HandleFunc("GET /keys/{name}", k.get)
	m.HandleFunc("GET /keys/{name}/{$}", k.get)
	m.HandleFunc("GET /keys/{name}/{version}", k.get)
	m.HandleFunc("PATCH /keys/{name}", k.update)
	m.HandleFunc("PATCH /keys/{name}/{$}", k.update)
	m.HandleFunc("PATCH /keys/{name}/{version}", k.update)
	m.HandleFunc("DELETE /keys/{name}", k.delete)
	m.HandleFunc("GET /keys/{name}/versions", k.versions)
	m.HandleFunc("POST /keys/{name}/backup", k.backup)
	m.HandleFunc("POST /keys/restore", k.restore)
	m.HandleFunc("POST /keys/{name}/rotate", k.rotate)
	for op, fn := range map[string]http.HandlerFunc{
		"sign": k.op(access.KeySign, key.Sign), "verify": k.op(access.KeyVerify, key.Verify),
		"encrypt": k.op(access.KeyEncrypt, key.Encrypt), "decrypt": k.op(access.KeyDecrypt, key.Decrypt),
		"wrapkey": k.op(access.KeyWrap, key.WrapKey), "unwrapkey": k.op(access.KeyUnwrap, key.UnwrapKey),
	} {
		m.HandleFunc("POST /keys/{name}/"+op, fn)
		m.HandleFunc("POST /keys/{name}/{version}/"+op, fn)
	}
	m.HandleFunc("GET /keys/{name}/rotationpolicy", k.rotationPolicy)
	m.HandleFunc("PUT /keys/{name}/rotationpolicy", k.rotationPolicy)
	m.HandleFunc("POST /keys/{name}/{version}/release", k.release)
	m.HandleFunc("GET /keys/{name}/attestation", k.attestation)
	m.HandleFunc("GET /keys/{name}/{version}/attestation", k.attestation)
	m.HandleFunc("POST /rng", k.rng)
	m.HandleFunc("GET /deletedkeys", k.listDeleted)
	m.HandleFunc("GET /deletedkeys/{$}", k.listDeleted)
	m.HandleFunc("GET /deletedkeys/{name}", k.getDeleted)
	m.HandleFunc("DELETE /deletedkeys/{name}", k.purge)
	m.HandleFunc("POST /deletedkeys/{name}/recover", k.recover)
}

func (k keyRoutes) out(c *call, key key.Key) keyOut {
	j := key.Public
	j.Kid = k.id(c, "keys", key.Name, key.Version)
	return keyOut{Key: j, Attributes: k.attributes(c, key.Attributes), Tags: key.Tags, Managed: key.Managed}
}

func (k keyRoutes) item(c *call, key key.Key) keyItemOut {
	return keyItemOut{KID: k.id(c, "keys", key.Name, ""), Attributes: k.attributes(c, key.Attributes), Tags: key.Tags, Managed: key.Managed}
}

func readKeyIn(w http.ResponseWriter, r *http.Request) (keyIn, key.Attrs, error) {
	var in keyIn
	if err := readJSON(w, r, maxKeyBody, &in); err != nil {
		return in, key.Attrs{}, err
	}
	a, err := in.attrs()
	return in, a, err
}

func (k keyRoutes) create(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyCreate, func(c *call) (any, error) {
		in, a, err := readKeyIn(w, r)
		if err != nil {
			return nil, err
		}
		if in.PublicExponent != 0 && in.PublicExponent != 65537 {
			return nil, object.Invalidf("public_exponent %d is not supported: Coffer creates RSA keys with 65537.", in.PublicExponent)
		}
		out, err := k.h.keys.Create(r.Context(), c.vault, r.PathValue("name"), key.CreateParams{Kty: in.Kty, Size: in.KeySize, Crv: in.Crv, Attrs: a})
		return k.out(c, out), err
	})
}

func (k keyRoutes) importKey(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyImport, func(c *call) (any, error) {
		in, a, err := readKeyIn(w, r)
		if err != nil {
			return nil, err
		}
		if in.Key == nil {
			return nil, object.Invalidf("The request body must contain the key to import, as a JWK in 'key'.")
		}
		if in.HSM != nil && *in.HSM {
			return nil, object.Invalidf("Hsm: true needs a hardware security module; Coffer keys are software-protected.")
		}
		out, err := k.h.keys.Import(r.Context(), c.vault, r.PathValue("name"), *in.Key, a)
		return k.out(c, out), err
	})
}

func (k keyRoutes) get(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyGet, func(c *call) (any, error) {
		out, err := k.h.keys.Get(r.Context(), c.vault, r.PathValue("name"), r.PathValue("version"))
		if err != nil {
			return nil, err
		}
		return conditional(w, r, keyETag(out), k.out(c, out)), nil
	})
}

func (k keyRoutes) update(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyUpdate, func(c *call) (any, error) {
		_, a, err := readKeyIn(w, r)
		if err != nil {
			return nil, err
		}
		out, err := k.h.keys.Update(r.Context(), c.vault, r.PathValue("name"), r.PathValue("version"), a)
		return k.out(c, out), err
	})
}

func (k keyRoutes) rotate(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyRotate, func(c *call) (any, error) {
		out, err := k.h.keys.Rotate(r.Context(), c.vault, r.PathValue("name"))
		return k.out(c, out), err
	})
}

// op serves a cryptographic operation.
func (k keyRoutes) op(perm access.Operation, name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		k.serve(w, r, perm, func(c *call) (any, error) {
			var in opIn
			if err := readJSON(w, r, maxKeyBody, &in); err != nil {
				return nil, err
			}
			if in.Alg == "" {
				return nil, object.Invalidf("The request body must name the algorithm in 'alg'.")
			}
			p := keyops.Params{Value: in.Value, IV: in.IV, AAD: in.AAD, Tag: in.Tag}
			var sig []byte
			if name == key.Verify {
				p.Value, sig = in.Digest, in.Value
			}
			kk, res, err := k.h.keys.Operate(r.Context(), c.vault, r.PathValue("name"), r.PathValue("version"), name, in.Alg, p, sig)
			if err != nil {
				return nil, err
			}
			if k.h.limiter != nil {
				// Key Vault weighs larger RSA keys' operations: 4 for
				// RSA-3072, 8 for RSA-4096 (one is already charged).
				k.h.limiter.Charge(c.vault.Name, c.vault.Throttle, c.principal.ObjectID, opWeight(kk)-1)
			}
			if res.Verified != nil {
				return map[string]bool{"value": *res.Verified}, nil
			}
			return opOut{KID: k.id(c, "keys", kk.Name, kk.Version), Value: res.Value, IV: res.IV, Tag: res.Tag, AAD: res.AAD}, nil
		})
	}
}

func (k keyRoutes) rotationPolicy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.Method == http.MethodGet {
		k.serve(w, r, access.KeyGetPolicy, func(c *call) (any, error) {
			p, err := k.h.keys.GetRotationPolicy(r.Context(), c.vault, name)
			p.ID = k.id(c, "keys", name, "rotationpolicy")
			return p, err
		})
		return
	}
	k.serve(w, r, access.KeySetPolicy, func(c *call) (any, error) {
		var in key.RotationPolicy
		if err := readJSON(w, r, maxKeyBody, &in); err != nil {
			return nil, err
		}
		p, err := k.h.keys.SetRotationPolicy(r.Context(), c.vault, name, in)
		p.ID = k.id(c, "keys", name, "rotationpolicy")
		return p, err
	})
}

func (k keyRoutes) release(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, op(access.Keys, "release", "keys/release/action"), func(c *call) (any, error) {
		return nil, object.Errorf(object.ErrInvalid, "NotSupported", "Key release needs attestation, which Coffer does not offer.")
	})
}

func (k keyRoutes) attestation(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyGet, func(c *call) (any, error) {
		return nil, object.Errorf(object.ErrInvalid, "NotSupported", "Key attestation needs a hardware security module; Coffer keys are software-protected.")
	})
}

func op(kind access.Kind, perm, action string) access.Operation {
	return access.Operation{Kind: kind, Permission: perm, DataAction: "Microsoft.KeyVault/vaults/" + action}
}

// rng returns random bytes. It discloses nothing, so any authenticated
// principal of the vault's tenant may call it.
func (k keyRoutes) rng(w http.ResponseWriter, r *http.Request) {
	c := callOf(r)
	c.audit.Operation, c.audit.Decision = "Microsoft.KeyVault/vaults/rng/action", "allow"
	var in struct {
		Count int `json:"count"`
	}
	if err := readJSON(w, r, maxEmptyBody, &in); err != nil {
		k.h.fail(w, r, k.kind, err)
		return
	}
	b, err := key.Random(in.Count)
	if err != nil {
		k.h.fail(w, r, k.kind, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]keyops.B64{"value": b})
}

func (k keyRoutes) delete(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyDelete, func(c *call) (any, error) {
		d, err := k.h.keys.Delete(r.Context(), c.vault, r.PathValue("name"))
		o := k.out(c, d.Key)
		o.deletedInfo = k.deleted(c, "keys", d.Name, d.DeletedDate, d.ScheduledPurge)
		return o, err
	})
}

func (k keyRoutes) list(w http.ResponseWriter, r *http.Request) {
	listPage(k.base, w, r, access.KeyList, func(c *call, after string, limit int) ([]keyItemOut, string, error) {
		items, next, err := k.h.keys.List(r.Context(), c.vault, after, limit)
		out := make([]keyItemOut, len(items))
		for i, it := range items {
			out[i] = k.item(c, it)
		}
		return out, next, err
	})
}

func (k keyRoutes) versions(w http.ResponseWriter, r *http.Request) {
	listPage(k.base, w, r, access.KeyList, func(c *call, after string, limit int) ([]keyItemOut, string, error) {
		items, next, err := k.h.keys.ListVersions(r.Context(), c.vault, r.PathValue("name"), after, limit)
		out := make([]keyItemOut, len(items))
		for i, it := range items {
			out[i] = k.item(c, it)
			out[i].KID = k.id(c, "keys", it.Name, it.Version)
		}
		return out, next, err
	})
}

func (k keyRoutes) listDeleted(w http.ResponseWriter, r *http.Request) {
	listPage(k.base, w, r, access.KeyList, func(c *call, after string, limit int) ([]keyItemOut, string, error) {
		items, next, err := k.h.keys.ListDeleted(r.Context(), c.vault, after, limit)
		out := make([]keyItemOut, len(items))
		for i, it := range items {
			out[i] = k.item(c, it.Key)
			out[i].deletedInfo = k.deleted(c, "keys", it.Name, it.DeletedDate, it.ScheduledPurge)
		}
		return out, next, err
	})
}

func (k keyRoutes) getDeleted(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyGet, func(c *call) (any, error) {
		d, err := k.h.keys.GetDeleted(r.Context(), c.vault, r.PathValue("name"))
		o := k.out(c, d.Key)
		o.deletedInfo = k.deleted(c, "keys", d.Name, d.DeletedDate, d.ScheduledPurge)
		return o, err
	})
}

func (k keyRoutes) recover(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyRecover, func(c *call) (any, error) {
		out, err := k.h.keys.Recover(r.Context(), c.vault, r.PathValue("name"))
		return k.out(c, out), err
	})
}

func (k keyRoutes) purge(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyPurge, func(c *call) (any, error) {
		return nil, k.h.keys.Purge(r.Context(), c.vault, r.PathValue("name"))
	})
}

func (k keyRoutes) backup(w http.ResponseWriter, r *http.Request) {
	k.serve(w, r, access.KeyBackup, func(c *call) (any, error) {
		return backupOut(k.h.keys.Backup(r.Context(), c.vault, r.PathValue("name")))
	})
}

func (k keyRoutes) restore(w http.ResponseWriter, r *http.Request) {
	k.serveOn(w, r, access.KeyRestore, "", func(c *call) (any, error) {
		blob, err := restoreBlob(w, r)
		if err != nil {
			return nil, err
		}
		out, err := k.h.keys.Restore(r.Context(), c.vault, blob)
		return k.out(c, out), err
	})
}

// opWeight is what Key Vault's limits charge for one operation on kk.
func opWeight(kk key.Key) float64 {
	// N is the modulus's bytes, without leading zeros.
	switch bits := len(kk.Public.N) * 8; {
	case bits > 3072+64:
		return 8
	case bits > 2048+64:
		return 4
	}
	return 1
}
