// Package events publishes changes to vault objects as Event Grid's Key
// Vault events, delivered as CloudEvents 1.0 over HTTPS to each vault's
// event subscriptions.
//
// Everything it keeps is in the store, so it survives restarts and is
// shared by replicas, and only the replica that leads the "events" job
// writes it:
//
//	evsubs/{vault}/{name}             a subscription: endpoint, types, signing secret
//	evstate/{vault}/{kind}/{name}     what was last seen of an object
//	evstate/{vault}/vault             a hash of the vault's access policies
//	evq/{vault}/{sub}/{seq}           an event not yet delivered, in order
//	evseq                             the queue's sequence counter
//
// Events are made by comparing the objects with what was last seen of them
// (so a write on any replica, or one made while no replica led, is seen
// once, on the next pass; the vault's access policies are compared by
// their hash), and by the clock (NearExpiry, Expired). An
// object's state and the events it yields are written in one batch, so
// each event is queued exactly once; delivery is at least once.
package events

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/server/egress"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// Errors of the subscription operations.
var (
	ErrNotFound = errors.New("event subscription not found")
	ErrExists   = errors.New("event subscription already exists")
	ErrInvalid  = errors.New("invalid event subscription")
)

// Event types: Event Grid's, for Key Vault, and Coffer's two extensions,
// which a subscription gets only when it names them.
const (
	azurePrefix  = "Microsoft.KeyVault."
	cofferPrefix = "Coffer.KeyVault."

	NewVersionCreated = "NewVersionCreated"
	NearExpiry        = "NearExpiry"
	Expired           = "Expired"
	Updated           = "Updated"
	Deleted           = "Deleted"

	// VaultAccessPolicyChanged is Event Grid's event about the vault
	// itself: its access policies or its permission model changed.
	VaultAccessPolicyChanged = azurePrefix + "VaultAccessPolicyChanged"
)

// accessObj is what Touch marks dirty when a vault's record changes. It
// has no "/", so it is never an object's "kind/name".
const accessObj = "vault"

// Object types as the events name them.
var objectTypes = map[string]string{"secrets": "Secret", "keys": "Key", "certificates": "Certificate"}

// Type is the full event type of what happened to an object of kind
// ("secrets", "keys", "certificates").
func Type(kind, what string) string {
	prefix := azurePrefix
	if what == Updated || what == Deleted {
		prefix = cofferPrefix
	}
	return prefix + objectTypes[kind] + what
}

// AllTypes lists every event type, Azure's first.
func AllTypes() []string {
	var out []string
	for _, extension := range []bool{false, true} {
		for _, kind := range []string{"secrets", "keys", "certificates"} {
			for _, what := range []string{NewVersionCreated, NearExpiry, Expired, Updated, Deleted} {
				if (what == Updated || what == Deleted) == extension {
					out = append(out, Type(kind, what))
				}
			}
		}
		if !extension {
			out = append(out, VaultAccessPolicyChanged)
		}
	}
	return out
}

// Options configure the service.
type Options struct {
	Store     *barrier.Barrier
	Vaults    *vault.Registry
	Endpoints endpoint.Endpoints
	// Egress checks endpoints and makes the delivery client.
	Egress egress.Policy
	// Now is the vault's clock, for NearExpiry and Expired.
	Now func() time.Time
	// ScanInterval is how often every subscribed vault is compared with
	// what was seen, besides after each change (default a minute): the
	// clock's events fire within it.
	ScanInterval time.Duration
	// MaxAttempts and MaxAge bound an event's delivery (defaults
	// DefaultMaxAttempts and DefaultMaxAge); past either it is dropped
	// and counted dead-lettered.
	MaxAttempts int
	MaxAge      time.Duration
	Registerer  prometheus.Registerer
	Log         *slog.Logger
}

// Service makes and delivers events.
type Service struct {
	o      Options
	st     *barrier.Barrier
	client *http.Client
	log    *slog.Logger

	mu sync.Mutex
	// dirty holds, by vault, the objects ("kind/name", as in their store
	// keys) written since their last pass.
	dirty      map[string]map[string]bool
	dirtyCount int
	lastScan   time.Time

	delivered, attempts, deadLettered *prometheus.CounterVec
	queued                            prometheus.Gauge
}

// New returns the service.
func New(o Options) *Service {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ScanInterval == 0 {
		o.ScanInterval = time.Minute
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &Service{o: o, st: o.Store, client: o.Egress.Client(15 * time.Second), log: o.Log, dirty: map[string]map[string]bool{}}
	s.delivered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_events_delivered_total", Help: "Events a subscription's endpoint acknowledged, by vault."}, []string{"vault"})
	s.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_events_failed_attempts_total", Help: "Event deliveries that failed and will be retried, by vault."}, []string{"vault"})
	s.deadLettered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_events_dead_lettered_total", Help: "Events dropped after their last retry (by default 30 attempts or 24 hours), by vault."}, []string{"vault"})
	s.queued = prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_events_queued", Help: "Events waiting for delivery, as the leading replica last counted them (at most 100 per subscription are counted)."})
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.delivered, s.attempts, s.deadLettered, s.queued)
	}
	return s
}

// Touch notes that a key of the store changed, so that the object it
// belongs to is compared on the next pass rather than at the next full
// one.
func (s *Service) Touch(key string) {
	if name, ok := vault.NameOf(key); ok {
		s.touch(name, accessObj)
		return
	}
	v, kind, name, ok := object.Named(key)
	if !ok {
		return
	}
	s.touch(v, kind+"/"+name)
}

// maxDirty bounds the objects remembered between passes. A replica that
// does not lead never runs a pass, yet hears of every write; past the
// bound it forgets them all and owes a full pass instead.
const maxDirty = 10000

func (s *Service) touch(vaultName, obj string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirtyCount >= maxDirty {
		s.dirty, s.dirtyCount, s.lastScan = map[string]map[string]bool{}, 0, time.Time{}
	}
	if s.dirty[vaultName] == nil {
		s.dirty[vaultName] = map[string]bool{}
	}
	if !s.dirty[vaultName][obj] {
		s.dirty[vaultName][obj] = true
		s.dirtyCount++
	}
}

// TouchAll makes the next pass a full one: after a gap in the store's
// watch, or when this replica starts to lead.
func (s *Service) TouchAll() {
	s.mu.Lock()
	s.lastScan = time.Time{}
	s.mu.Unlock()
}

// Tick runs one pass: it makes the events of what changed (of everything,
// once per ScanInterval) and delivers what is due. The leading replica
// calls it, with its fenced context.
func (s *Service) Tick(ctx context.Context) {
	subs, err := s.allSubscriptions(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("events: cannot read the subscriptions", "err", err)
		}
		return
	}
	s.mu.Lock()
	full := time.Since(s.lastScan) >= s.o.ScanInterval
	dirty := s.dirty
	s.dirty, s.dirtyCount = map[string]map[string]bool{}, 0
	if full {
		s.lastScan = time.Now()
	}
	s.mu.Unlock()
	for vaultName, vs := range subs {
		if !full && len(dirty[vaultName]) == 0 {
			continue
		}
		v, err := s.o.Vaults.Get(vaultName)
		if err != nil {
			continue // the vault is gone; so is every object of it
		}
		if full {
			err = s.scan(ctx, v, vs)
		} else {
			var errs []error
			for obj := range dirty[vaultName] {
				kind, name, _ := strings.Cut(obj, "/")
				var err error
				switch _, ok := objectTypes[kind]; {
				case obj == accessObj:
					err = s.scanAccess(ctx, v, vs)
				case ok:
					err = s.scanObject(ctx, v, kind, name, vs)
				default:
					continue
				}
				if err != nil {
					errs = append(errs, err)
					s.touch(vaultName, obj) // again on the next pass
				}
			}
			err = errors.Join(errs...)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("events: comparing a vault failed; the next pass tries again", "vault", vaultName, "err", err)
			if full {
				s.TouchAll()
			}
		}
	}
	s.deliver(ctx, subs)
}
