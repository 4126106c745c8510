package events

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// defaultNotifyBefore is when NearExpiry fires, as in Event Grid: 30 days
// before exp, unless a key's Notify action or a certificate's EmailContacts
// action says otherwise.
const defaultNotifyBefore = 30 * 24 * time.Hour

// CloudEvent is an event as delivered: CloudEvents 1.0 in structured JSON
// mode, with Event Grid's Key Vault data.
type CloudEvent struct {
	SpecVersion     string `json:"specversion"`
	Type            string `json:"type"`
	Source          string `json:"source"`
	ID              string `json:"id"`
	Time            string `json:"time"`
	Subject         string `json:"subject"`
	DataContentType string `json:"datacontenttype"`
	Data            Data   `json:"data"`
}

// Data is Event Grid's data of a Key Vault event: which object and
// version, and its validity. It never holds a value.
type Data struct {
	ID         string `json:"Id"`
	VaultName  string `json:"VaultName"`
	ObjectType string `json:"ObjectType"`
	ObjectName string `json:"ObjectName"`
	Version    string `json:"Version"`
	NBF        *int64 `json:"NBF"`
	EXP        *int64 `json:"EXP"`
}

// state is what was last seen of an object.
type state struct {
	Seq     uint64 `json:"seq"`
	Order   uint64 `json:"order"`
	Live    bool   `json:"live"`
	Managed bool   `json:"managed,omitempty"`
	Version string `json:"version"`
	NBF     *int64 `json:"nbf,omitempty"`
	EXP     *int64 `json:"exp,omitempty"`
	// Near and Expired name the version:exp each event was sent for, so a
	// new version or a new exp fires it again, and nothing else does.
	Near    string `json:"near,omitempty"`
	Expired string `json:"expired,omitempty"`
}

// same reports whether two states are equal, by value.
func same(a, b state) bool {
	ab, _ := json.Marshal(a)
	bb, _ := json.Marshal(b)
	return bytes.Equal(ab, bb)
}

// versionMeta is what a pass reads of a version: never its data.
type versionMeta struct {
	ID         string            `json:"version"`
	Attributes object.Attributes `json:"attributes"`
	Managed    bool              `json:"managed"`
	Order      uint64            `json:"order"`
}

// queued is an event waiting for delivery to one subscription.
type queued struct {
	Event    CloudEvent `json:"event"`
	Attempts int        `json:"attempts"`
	// First and Next are wall-clock Unix milliseconds: delivery follows
	// real time, whatever the vault's clock says.
	First int64 `json:"first"`
	Next  int64 `json:"next"`
	// at is when the event happened, to match subscriptions made since.
	at int64
}

func (s *Service) scan(ctx context.Context, v *vault.Vault, subs []Subscription) error {
	var errs []error
	if err := s.scanAccess(ctx, v, subs); err != nil {
		errs = append(errs, fmt.Errorf("access policies: %w", err))
	}
	for _, kind := range []string{"secrets", "keys", "certificates"} {
		if err := s.scanKind(ctx, v, kind, subs); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", kind, err))
		}
	}
	return errors.Join(errs...)
}

type stateRec struct {
	st  state
	rev barrier.Rev
}

func (s *Service) scanKind(ctx context.Context, v *vault.Vault, kind string, subs []Subscription) error {
	now := s.o.Now()
	sprefix := statePrefix + v.Name + "/" + kind + "/"
	recs, err := s.st.Scan(ctx, sprefix, "", 0)
	if err != nil {
		return err
	}
	states := map[string]stateRec{}
	for _, r := range recs {
		var st state
		if json.Unmarshal(r.Value, &st) == nil {
			states[strings.TrimPrefix(r.Key, sprefix)] = stateRec{st, r.Rev}
		}
	}
	base := "o/" + v.Name + "/" + kind + "/"
	seen := map[string]bool{}
	var errs []error
	for _, sub := range []string{"h/", "d/"} {
		heads, err := s.st.Scan(ctx, base+sub, "", 0)
		if err != nil {
			return err
		}
		for _, hr := range heads {
			lname := strings.TrimPrefix(hr.Key, base+sub)
			seen[lname] = true
			var h object.Head
			if err := json.Unmarshal(hr.Value, &h); err != nil {
				continue
			}
			prev, had := states[lname]
			if err := s.compare(ctx, v, kind, lname, &h, sub == "d/", prev, had, subs, now); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// What is neither live nor deleted was purged: forget it.
	for lname, sr := range states {
		if !seen[lname] {
			if err := s.compare(ctx, v, kind, lname, nil, false, sr, true, subs, now); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// scanObject compares one object, named as in its store keys (lowercase),
// as scanKind would: what a write touched, without reading the others.
func (s *Service) scanObject(ctx context.Context, v *vault.Vault, kind, lname string, subs []Subscription) error {
	var prev stateRec
	had := false
	rec, err := s.st.Get(ctx, statePrefix+v.Name+"/"+kind+"/"+lname)
	switch {
	case err == nil:
		had = json.Unmarshal(rec.Value, &prev.st) == nil
		prev.rev = rec.Rev
	case !errors.Is(err, barrier.ErrNotFound):
		return err
	}
	base := "o/" + v.Name + "/" + kind + "/"
	for _, sub := range []string{"h/", "d/"} {
		hr, err := s.st.Get(ctx, base+sub+lname)
		if errors.Is(err, barrier.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		var h object.Head
		if err := json.Unmarshal(hr.Value, &h); err != nil {
			return err
		}
		return s.compare(ctx, v, kind, lname, &h, sub == "d/", prev, had, subs, s.o.Now())
	}
	if !had {
		return nil
	}
	return s.compare(ctx, v, kind, lname, nil, false, prev, had, subs, s.o.Now())
}

// compare brings one object's state up to date with its head h (nil:
// purged; deleted: soft-deleted), queueing the events that yields.
func (s *Service) compare(ctx context.Context, v *vault.Vault, kind, lname string, h *object.Head, deleted bool, prev stateRec, had bool, subs []Subscription, now time.Time) error {
	stateKey := statePrefix + v.Name + "/" + kind + "/" + lname
	if h == nil {
		return s.commit(ctx, stateKey, prev.rev, nil, nil, subs)
	}
	var next state
	var evs []queued
	if !deleted {
		var err error
		next, evs, err = s.live(ctx, v, kind, "o/"+v.Name+"/"+kind+"/", lname, *h, prev.st, had, now)
		if err != nil {
			return err
		}
	} else {
		next = prev.st
		if had && prev.st.Live {
			next.Live, next.Seq = false, h.Seq
			if !prev.st.Managed {
				evs = append(evs, s.event(v, kind, h.Name, prev.st.Version, Deleted, prev.st.NBF, prev.st.EXP, now))
			}
		}
	}
	if had && same(next, prev.st) && len(evs) == 0 {
		return nil
	}
	return s.commit(ctx, stateKey, prev.rev, &next, evs, subs)
}

// live compares a live object with what was seen of it, and returns what
// to remember and the events it yields.
func (s *Service) live(ctx context.Context, v *vault.Vault, kind, base, lname string, h object.Head, prev state, had bool, now time.Time) (state, []queued, error) {
	next := prev
	var evs []queued
	if !had || prev.Seq != h.Seq || !prev.Live {
		recs, err := s.st.Scan(ctx, base+"v/"+lname+"/", "", 0)
		if err != nil {
			return prev, nil, err
		}
		var vers []versionMeta
		var cur *versionMeta
		for _, r := range recs {
			var vm versionMeta
			if json.Unmarshal(r.Value, &vm) == nil {
				vers = append(vers, vm)
			}
		}
		slices.SortFunc(vers, func(a, b versionMeta) int {
			if a.Order != b.Order {
				return int(a.Order) - int(b.Order)
			}
			return int(a.Attributes.Created - b.Attributes.Created)
		})
		for i := range vers {
			if vers[i].ID == h.Current {
				cur = &vers[i]
			}
		}
		if cur == nil {
			return prev, nil, fmt.Errorf("%s/%s: its current version is missing", kind, h.Name)
		}
		next = state{Seq: h.Seq, Order: prev.Order, Live: true, Managed: cur.Managed, Version: cur.ID,
			NBF: cur.Attributes.NotBefore, EXP: cur.Attributes.Expires, Near: prev.Near, Expired: prev.Expired}
		made := 0
		for _, vm := range vers {
			// Versions stored before Order existed have 0: new only to an
			// object never seen.
			if vm.Order > prev.Order || !had && vm.Order == 0 {
				if !vm.Managed {
					q := s.event(v, kind, h.Name, vm.ID, NewVersionCreated, vm.Attributes.NotBefore, vm.Attributes.Expires, time.Unix(vm.Attributes.Created, 0))
					evs = append(evs, q)
				}
				made++
			}
			next.Order = max(next.Order, vm.Order)
		}
		if made == 0 && had && !cur.Managed {
			// The same versions, changed (attributes, tags), or recovered.
			evs = append(evs, s.event(v, kind, h.Name, cur.ID, Updated, cur.Attributes.NotBefore, cur.Attributes.Expires, now))
		}
	}
	if next.EXP != nil && !next.Managed {
		exp := time.Unix(*next.EXP, 0)
		tag := next.Version + ":" + strconv.FormatInt(*next.EXP, 10)
		if !now.Before(exp.Add(-notifyBefore(kind, h, next))) && next.Near != tag {
			evs = append(evs, s.event(v, kind, h.Name, next.Version, NearExpiry, next.NBF, next.EXP, now))
			next.Near = tag
		}
		if !now.Before(exp) && next.Expired != tag {
			evs = append(evs, s.event(v, kind, h.Name, next.Version, Expired, next.NBF, next.EXP, now))
			next.Expired = tag
		}
	}
	return next, evs, nil
}

// notifyBefore is how long before exp an object's NearExpiry fires: a
// key's Notify action, a certificate's EmailContacts action (Coffer sends
// this event instead of mail), or 30 days.
func notifyBefore(kind string, h object.Head, st state) time.Duration {
	switch kind {
	case "keys":
		d := key.NotifyBefore(h.Meta)
		return d.Approx()
	case "certificates":
		var p cert.Policy
		if len(h.Meta) == 0 || json.Unmarshal(h.Meta, &p) != nil {
			break
		}
		for _, la := range p.LifetimeActions {
			if la.Action.ActionType != cert.EmailContacts {
				continue
			}
			if d := la.Trigger.DaysBeforeExpiry; d > 0 {
				return time.Duration(d) * 24 * time.Hour
			}
			if pct := la.Trigger.LifetimePercentage; pct > 0 && st.NBF != nil && st.EXP != nil {
				life := time.Duration(*st.EXP-*st.NBF) * time.Second
				return life * time.Duration(100-pct) / 100
			}
		}
	}
	return defaultNotifyBefore
}

func newEventID() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// event makes one event about version of object name.
func (s *Service) event(v *vault.Vault, kind, name, version, what string, nbf, exp *int64, at time.Time) queued {
	id := strings.TrimSuffix(s.o.Endpoints.VaultURL(v.Name), "/") + "/" + kind + "/" + name + "/" + version
	return queued{at: at.Unix(), Event: CloudEvent{
		SpecVersion: "1.0", Type: Type(kind, what), Source: v.ID(), ID: newEventID(),
		Time: at.UTC().Format(time.RFC3339Nano), Subject: name, DataContentType: "application/json",
		Data: Data{ID: id, VaultName: v.Name, ObjectType: objectTypes[kind], ObjectName: name, Version: version, NBF: nbf, EXP: exp},
	}}
}

// accessState is what was last seen of a vault's access policies: their
// digest, never the policies.
type accessState struct {
	Digest string `json:"digest"`
}

// scanAccess compares the vault's access policies and permission model,
// as stored (not as this replica's registry last loaded them), with what
// was last seen, and queues a VaultAccessPolicyChanged if they differ.
//
// The event is dated by the vault's AccessChanged, so a subscription made
// after the change does not get it. That also decides the first sight of a
// vault (a vault is compared only once it has a subscription): a change
// since the subscription was made is still sent, and a vault never changed
// since its creation (AccessChanged 0) sends nothing. Changes between two
// passes make one event, as an object's do.
func (s *Service) scanAccess(ctx context.Context, v *vault.Vault, subs []Subscription) error {
	rec, err := s.st.Get(ctx, vault.Key(v.Name))
	if errors.Is(err, barrier.ErrNotFound) {
		return nil // the vault is gone, and with it its subscriptions
	}
	if err != nil {
		return err
	}
	var cur vault.Vault
	if err := json.Unmarshal(rec.Value, &cur); err != nil {
		return fmt.Errorf("vault %s: %w", v.Name, err)
	}
	next := accessState{Digest: cur.AccessDigest()}
	stateKey := statePrefix + v.Name + "/" + accessObj
	var prev accessState
	var rev barrier.Rev
	had := false
	switch prec, err := s.st.Get(ctx, stateKey); {
	case err == nil:
		had, rev = json.Unmarshal(prec.Value, &prev) == nil, prec.Rev
	case !errors.Is(err, barrier.ErrNotFound):
		return err
	}
	if had && prev.Digest == next.Digest {
		return nil
	}
	var evs []queued
	if cur.AccessChanged != 0 || had {
		at := s.o.Now()
		if cur.AccessChanged != 0 {
			at = time.Unix(cur.AccessChanged, 0)
		}
		evs = append(evs, s.accessEvent(v, at))
	}
	return s.commit(ctx, stateKey, rev, next, evs, subs)
}

// accessEvent makes the vault's VaultAccessPolicyChanged. Event Grid's data
// names the vault as the object; it has no version and no validity.
func (s *Service) accessEvent(v *vault.Vault, at time.Time) queued {
	return queued{at: at.Unix(), Event: CloudEvent{
		SpecVersion: "1.0", Type: VaultAccessPolicyChanged, Source: v.ID(), ID: newEventID(),
		Time: at.UTC().Format(time.RFC3339Nano), Subject: v.Name, DataContentType: "application/json",
		Data: Data{ID: s.o.Endpoints.VaultURL(v.Name), VaultName: v.Name, ObjectType: "Vault", ObjectName: v.Name},
	}}
}

// commit writes a new state (next, marshalled; nil: forget it) and queues
// its events for the subscriptions that want them and existed when they
// happened, in one batch conditional on the state it read.
func (s *Service) commit(ctx context.Context, stateKey string, rev barrier.Rev, next any, evs []queued, subs []Subscription) error {
	conds := []barrier.Cond{{Key: stateKey, Rev: rev}}
	var ops []barrier.Op
	if next == nil {
		ops = append(ops, barrier.Op{Key: stateKey, Delete: true})
	} else {
		b, _ := json.Marshal(next)
		ops = append(ops, barrier.Op{Key: stateKey, Value: b})
	}
	var seq uint64
	seqRec, err := s.st.Get(ctx, seqKey)
	switch {
	case err == nil:
		seq, _ = strconv.ParseUint(string(seqRec.Value), 10, 64)
	case !errors.Is(err, barrier.ErrNotFound):
		return err
	}
	nowMs := time.Now().UnixMilli()
	n := 0
	for _, q := range evs {
		for _, sub := range subs {
			if !sub.wants(q.Event.Type) || q.at < sub.Created {
				continue
			}
			seq++
			q.First, q.Next = nowMs, nowMs
			b, _ := json.Marshal(q)
			ops = append(ops, barrier.Op{Key: fmt.Sprintf("%s%s/%s/%020d", queuePrefix, sub.Vault, strings.ToLower(sub.Name), seq), Value: b})
			n++
		}
	}
	if n > 0 {
		conds = append(conds, barrier.Cond{Key: seqKey, Rev: seqRec.Rev})
		ops = append(ops, barrier.Op{Key: seqKey, Value: []byte(strconv.FormatUint(seq, 10))})
	}
	return s.st.Apply(ctx, conds, ops)
}
