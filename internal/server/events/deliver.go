package events

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/webhooksig"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// Delivery gives up on an event after DefaultMaxAttempts tries or once it
// is DefaultMaxAge old, whichever comes first, as Event Grid does by
// default, and counts it dead-lettered.
const (
	DefaultMaxAttempts = 30
	DefaultMaxAge      = 24 * time.Hour
	maxBackoff         = 5 * time.Minute
	// perTick bounds the events sent to one subscription in one pass.
	perTick = 100
)

// ContentType is the structured CloudEvents JSON type deliveries carry.
const ContentType = "application/cloudevents+json; charset=utf-8"

// backoff is the wait after the n-th failed attempt: 1s, 2s, 4s, ... up
// to five minutes.
func backoff(n int) time.Duration {
	d := time.Second << min(n-1, 20)
	return min(d, maxBackoff)
}

// deliver sends every subscription's due events, subscriptions in
// parallel, each one's in order.
func (s *Service) deliver(ctx context.Context, subs map[string][]Subscription) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	waiting := 0
	for _, vs := range subs {
		for _, sub := range vs {
			wg.Go(func() {
				n := s.deliverTo(ctx, sub)
				mu.Lock()
				waiting += n
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	s.queued.Set(float64(waiting))
}

// deliverTo sends one subscription's due events, oldest first, and stops
// at the first that fails: a later event about the same object must not
// overtake it. It returns how many events it left queued (up to perTick).
func (s *Service) deliverTo(ctx context.Context, sub Subscription) int {
	prefix := queuePrefix + sub.Vault + "/" + strings.ToLower(sub.Name) + "/"
	recs, err := s.st.Scan(ctx, prefix, "", perTick)
	if err != nil {
		return 0
	}
	for i, r := range recs {
		var q queued
		if err := json.Unmarshal(r.Value, &q); err != nil {
			s.st.Apply(ctx, []barrier.Cond{{Key: r.Key, Rev: r.Rev}}, []barrier.Op{{Key: r.Key, Delete: true}})
			continue
		}
		now := time.Now()
		if q.Next > now.UnixMilli() {
			return len(recs) - i
		}
		err := s.post(ctx, sub, q)
		if ctx.Err() != nil {
			return len(recs) - i
		}
		if err == nil {
			if s.st.Apply(ctx, []barrier.Cond{{Key: r.Key, Rev: r.Rev}}, []barrier.Op{{Key: r.Key, Delete: true}}) == nil {
				s.delivered.WithLabelValues(sub.Vault).Inc()
			}
			continue
		}
		q.Attempts++
		if q.Attempts >= s.o.MaxAttempts || now.Sub(time.UnixMilli(q.First)) >= s.o.MaxAge {
			s.deadLetter(ctx, sub, r, q, err)
			continue
		}
		q.Next = now.Add(backoff(q.Attempts)).UnixMilli()
		b, _ := json.Marshal(q)
		s.st.Apply(ctx, []barrier.Cond{{Key: r.Key, Rev: r.Rev}}, []barrier.Op{{Key: r.Key, Value: b}})
		s.attempts.WithLabelValues(sub.Vault).Inc()
		s.log.Debug("events: delivery failed; retrying", "vault", sub.Vault, "subscription", sub.Name, "type", q.Event.Type, "attempt", q.Attempts, "err", err)
		return len(recs) - i
	}
	return 0
}

// deadLetter drops an event after its last attempt and counts it, in the
// metrics and on the subscription.
func (s *Service) deadLetter(ctx context.Context, sub Subscription, r barrier.Record, q queued, cause error) {
	s.log.Warn("events: an event was dropped after its last delivery attempt", "vault", sub.Vault, "subscription", sub.Name,
		"type", q.Event.Type, "object", q.Event.Subject, "attempts", q.Attempts, "err", cause)
	err := object.Retry(func() error {
		cur, rev, err := s.get(ctx, sub.Vault, sub.Name)
		if err != nil {
			// The subscription is gone: drop the event alone.
			return s.st.Apply(ctx, []barrier.Cond{{Key: r.Key, Rev: r.Rev}}, []barrier.Op{{Key: r.Key, Delete: true}})
		}
		cur.DeadLettered++
		b, _ := json.Marshal(cur)
		k := subKey(sub.Vault, sub.Name)
		return s.st.Apply(ctx, []barrier.Cond{{Key: r.Key, Rev: r.Rev}, {Key: k, Rev: rev}},
			[]barrier.Op{{Key: r.Key, Delete: true}, {Key: k, Value: b}})
	})
	if err == nil {
		s.deadLettered.WithLabelValues(sub.Vault).Inc()
	}
}

// post sends one event; only a 2xx answer acknowledges it.
func (s *Service) post(ctx context.Context, sub Subscription, q queued) error {
	body, err := json.Marshal(q.Event)
	if err != nil {
		return err
	}
	if _, err := s.o.Egress.CheckURL(sub.Endpoint); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, sub.Endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set(webhooksig.Header, webhooksig.Sign([]byte(sub.Secret), time.Now(), body))
	// Event Grid's delivery headers, which its receivers read.
	req.Header.Set("aeg-event-type", "Notification")
	req.Header.Set("aeg-subscription-name", sub.Name)
	req.Header.Set("aeg-delivery-count", strconv.Itoa(q.Attempts))
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 16<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the endpoint answered %s", resp.Status)
	}
	return nil
}
