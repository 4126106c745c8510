package storecheck

import (
	"crypto/x509"
	"encoding/json"
	"sort"
	"strings"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
)

// objectID names one object: a vault, a kind (collection) and a
// lowercased name.
type objectID struct{ vault, kind, name string }

func (id objectID) base() string    { return "o/" + id.vault + "/" + id.kind + "/" }
func (id objectID) headKey() string { return id.base() + "h/" + id.name }
func (id objectID) delKey() string  { return id.base() + "d/" + id.name }
func (id objectID) verKey(v string) string {
	return id.base() + "v/" + id.name + "/" + v
}

// obj is what the walk learnt of one object.
type obj struct {
	live, deleted *object.Head
	versions      map[string]version // by lowercased id
}

type version struct {
	key     string
	managed bool
	// broken means the blob did not open (reported at its key): it is
	// there, but what it holds is unknown.
	broken bool
}

// state is where the object's head lives: "live", "deleted" or "".
func (o *obj) state() string {
	switch {
	case o.live != nil:
		return "live"
	case o.deleted != nil:
		return "deleted"
	}
	return ""
}

func (o *obj) head() *object.Head {
	if o.live != nil {
		return o.live
	}
	return o.deleted
}

// currentManaged reports whether the object's current version is managed
// by a certificate.
func (o *obj) currentManaged() bool {
	h := o.head()
	if h == nil {
		return false
	}
	v, ok := o.versions[strings.ToLower(h.Current)]
	return ok && v.managed
}

func (c *checker) object(id objectID) *obj {
	o := c.objects[id]
	if o == nil {
		o = &obj{versions: map[string]version{}}
		c.objects[id] = o
	}
	return o
}

// kinds checks a version's kind-specific data; nil for unknown kinds.
var kinds = map[string]func(c *checker, at string, data json.RawMessage){
	secret.Collection: func(c *checker, at string, data json.RawMessage) {
		var d secret.Data
		c.decode(at, data, &d, "a secret's data")
	},
	key.Collection: func(c *checker, at string, data json.RawMessage) {
		var d key.Data
		if !c.decode(at, data, &d, "a key's data") {
			return
		}
		if _, err := keyops.FromJWK(d.JWK); err != nil {
			c.damage(at, "its key material does not parse (%s key)", d.JWK.Kty)
		}
	},
	cert.Collection: func(c *checker, at string, data json.RawMessage) {
		var d cert.Data
		if !c.decode(at, data, &d, "a certificate's data") {
			return
		}
		if _, err := x509.ParseCertificate(d.CER); err != nil {
			c.damage(at, "its certificate is not DER: %v", err)
		}
	},
}

// brokenBlob remembers a version whose blob did not open, so that its
// head is not also said to name a missing version.
func (c *checker) brokenBlob(key string) {
	parts := strings.SplitN(strings.TrimPrefix(key, "o/"), "/", 5)
	if len(parts) == 5 && parts[2] == "v" {
		o := c.object(objectID{vault: parts[0], kind: parts[1], name: parts[3]})
		o.versions[parts[4]] = version{key: key, broken: true}
	}
}

// objectRecord checks one head or version and remembers it.
func (c *checker) objectRecord(key string, plain []byte) {
	parts := strings.SplitN(strings.TrimPrefix(key, "o/"), "/", 5)
	if len(parts) < 4 || parts[0] == "" || parts[1] == "" || parts[3] == "" {
		c.damage(key, "is not an object's key (o/VAULT/KIND/h|d|v/NAME)")
		return
	}
	id := objectID{vault: parts[0], kind: parts[1], name: parts[3]}
	checkData, known := kinds[id.kind]
	if !known {
		c.damage(key, "holds an object of the unknown kind %q", id.kind)
		return
	}
	o := c.object(id)
	switch parts[2] {
	case "h", "d":
		if len(parts) != 4 {
			c.damage(key, "is not an object's key (a head has no version)")
			return
		}
		var h object.Head
		if !c.decode(key, plain, &h, "an object's head") {
			return
		}
		if strings.ToLower(h.Name) != id.name {
			c.damage(key, "holds the head of %q, not of %q", h.Name, id.name)
		}
		if parts[2] == "h" {
			c.counts["objects"]++
			o.live = &h
			if h.DeletedDate != 0 {
				c.damage(key, "is a live head with a deletion date")
			}
		} else {
			c.counts["deleted objects"]++
			o.deleted = &h
			if h.DeletedDate == 0 || h.ScheduledPurge == 0 {
				c.damage(key, "is a deleted head without its deletion or purge date")
			}
		}
	case "v":
		if len(parts) != 5 || parts[4] == "" {
			c.damage(key, "is not a version's key (o/VAULT/KIND/v/NAME/VERSION)")
			return
		}
		c.counts["object versions"]++
		var v object.Version[json.RawMessage]
		if !c.decode(key, plain, &v, "an object version") {
			return
		}
		if strings.ToLower(v.ID) != parts[4] {
			c.damage(key, "holds version %q, not %q", v.ID, parts[4])
		}
		if strings.ToLower(v.Name) != id.name {
			c.damage(key, "holds a version of %q, not of %q", v.Name, id.name)
		}
		checkData(c, key, v.Data)
		o.versions[parts[4]] = version{key: key, managed: v.Managed}
	default:
		c.damage(key, "is not an object's key (o/VAULT/KIND/h|d|v/NAME)")
	}
}

// checkObjects checks every object's head against its versions and its
// vault, and every certificate against its managed key and secret.
func (c *checker) checkObjects() {
	ids := make([]objectID, 0, len(c.objects))
	for id := range c.objects {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].headKey() < ids[j].headKey() })
	for _, id := range ids {
		o := c.objects[id]
		h, hkey := o.live, id.headKey()
		if h == nil {
			h, hkey = o.deleted, id.delKey()
		}
		if h == nil {
			for _, v := range sortedVersions(o) {
				c.damage(v.key, "is a version of %s, which has no head (neither %s nor %s)", id.name, id.headKey(), id.delKey())
			}
			continue
		}
		if o.live != nil && o.deleted != nil {
			c.damage(id.delKey(), "the object is both live (%s) and deleted", id.headKey())
		}
		if _, ok := c.vaults[id.vault]; !ok {
			c.damage(hkey, "belongs to vault %q, which the registry does not hold (vaults/%s)", id.vault, id.vault)
		}
		switch {
		case h.Current == "":
			c.damage(hkey, "names no current version")
		case !has(o, h.Current):
			c.damage(hkey, "names current version %s, which does not exist (%s)", h.Current, id.verKey(strings.ToLower(h.Current)))
		}
		if h.Purging != "" {
			// A purge or restore written in several transactions (etcd's
			// limits), still running or cut off: its older versions, or a
			// certificate's managed key and secret, may be gone already
			// or not yet written. The next purge removes it.
			c.counts["objects being purged"]++
			continue
		}
		if h.Previous != "" && !has(o, h.Previous) {
			c.damage(hkey, "names previous version %s, which does not exist (%s)", h.Previous, id.verKey(strings.ToLower(h.Previous)))
		}
		switch id.kind {
		case cert.Collection:
			c.counts["certificates"]++
			c.checkManaged(id, o, hkey, key.Collection, "key")
			c.checkManaged(id, o, hkey, secret.Collection, "secret")
		case key.Collection, secret.Collection:
			if o.currentManaged() {
				cid := objectID{id.vault, cert.Collection, id.name}
				if crt := c.objects[cid]; crt == nil || crt.state() == "" {
					c.damage(hkey, "is managed by a certificate, but there is no certificate %s (%s)", id.name, cid.headKey())
				}
			}
		}
	}
}

// checkManaged checks the managed key or secret (kind) of the certificate
// id: one object in the same state, with the same current version and a
// managed version for every certificate version.
func (c *checker) checkManaged(id objectID, crt *obj, hkey, kind, what string) {
	mid := objectID{id.vault, kind, id.name}
	m := c.objects[mid]
	if m == nil || m.state() == "" {
		c.damage(hkey, "has no managed %s (%s)", what, mid.headKey())
		return
	}
	if m.state() != crt.state() {
		c.damage(hkey, "is %s, but its managed %s is %s", crt.state(), what, m.state())
	}
	if ch, mh := crt.head(), m.head(); !strings.EqualFold(ch.Current, mh.Current) {
		c.damage(hkey, "has current version %s, but its managed %s has %s", ch.Current, what, mh.Current)
	}
	for _, v := range sortedVersions(crt) {
		ver := v.key[strings.LastIndexByte(v.key, '/')+1:]
		mv, ok := m.versions[ver]
		switch {
		case !ok:
			c.damage(v.key, "has no managed %s version (%s)", what, mid.verKey(ver))
		case !mv.managed && !mv.broken:
			c.damage(mv.key, "is the %s of certificate version %s, but is not marked managed", what, ver)
		}
	}
	for _, mv := range sortedVersions(m) {
		ver := mv.key[strings.LastIndexByte(mv.key, '/')+1:]
		if _, ok := crt.versions[ver]; !ok && mv.managed {
			c.damage(mv.key, "is a managed %s version with no certificate version (%s)", what, id.verKey(ver))
		}
	}
}

func has(o *obj, v string) bool { _, ok := o.versions[strings.ToLower(v)]; return ok }

func sortedVersions(o *obj) []version {
	out := make([]version, 0, len(o.versions))
	for _, v := range o.versions {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

// certOp checks a certificate operation's record.
func (c *checker) certOp(key string, plain []byte) {
	parts, ok := split(key, "certops/", 2)
	if !ok {
		c.damage(key, "is not a certificate operation's key (certops/VAULT/NAME)")
		return
	}
	c.counts["certificate operations"]++
	var op struct {
		Name string `json:"name"`
		Op   struct {
			Status string `json:"status"`
		} `json:"op"`
	}
	if !c.decode(key, plain, &op, "a certificate operation") {
		return
	}
	if strings.ToLower(op.Name) != parts[1] {
		c.damage(key, "holds the operation of %q, not of %q", op.Name, parts[1])
	}
	c.needVault = append(c.needVault, ref{key: key, name: parts[0]})
}
