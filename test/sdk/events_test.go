package sdk

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/cofferhq/coffer/internal/cli"
	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/protocol/webhooksig"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/events"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// ceReceiver is an event receiver built on the CloudEvents SDK's HTTP
// protocol, behind a check of Coffer's signature header, over TLS on
// loopback. It can be stopped and started again on the same address.
type ceReceiver struct {
	t      *testing.T
	addr   string
	srv    *httptest.Server
	secret atomic.Pointer[[]byte]

	mu     sync.Mutex
	got    []event.Event
	bodies [][]byte
	badSig int
}

func startReceiver(t *testing.T) *ceReceiver {
	r := &ceReceiver{t: t}
	r.start()
	t.Cleanup(func() { r.stop() })
	return r
}

func (r *ceReceiver) handler() http.Handler {
	p, err := cloudevents.NewHTTP()
	if err != nil {
		r.t.Fatal(err)
	}
	ce, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, func(_ context.Context, e event.Event) {
		r.mu.Lock()
		r.got = append(r.got, e)
		r.mu.Unlock()
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		secret := r.secret.Load()
		if secret == nil || webhooksig.Verify(*secret, req.Header.Get(webhooksig.Header), body, time.Now(), 5*time.Minute) != nil {
			r.mu.Lock()
			r.badSig++
			r.mu.Unlock()
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		r.mu.Lock()
		r.bodies = append(r.bodies, body)
		r.mu.Unlock()
		req.Body = io.NopCloser(bytes.NewReader(body))
		ce.ServeHTTP(w, req)
	})
}

func (r *ceReceiver) start() {
	srv := httptest.NewUnstartedServer(r.handler())
	if r.addr != "" {
		l, err := net.Listen("tcp", r.addr)
		if err != nil {
			r.t.Fatalf("listen again on %s: %v", r.addr, err)
		}
		srv.Listener.Close()
		srv.Listener = l
	}
	srv.StartTLS()
	r.srv, r.addr = srv, srv.Listener.Addr().String()
}

func (r *ceReceiver) stop() { r.srv.Close() }

func (r *ceReceiver) url() string { return "https://" + r.addr + "/events" }

// roots trusts the receiver's certificate (httptest's, the same for
// every server it starts).
func (r *ceReceiver) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(r.srv.Certificate())
	return p
}

// await waits until an event of type typ about object name has arrived,
// and returns it.
func (r *ceReceiver) await(typ, name string) event.Event {
	r.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		r.mu.Lock()
		for _, e := range r.got {
			if e.Type() == typ && e.Subject() == name {
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
	}
	r.t.Fatalf("no %s event for %s arrived; got %v", typ, name, r.types(""))
	return event.Event{}
}

// types lists the types of the events received about name ("" for all).
func (r *ceReceiver) types(name string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.got {
		if name == "" || e.Subject() == name {
			out = append(out, e.Type())
		}
	}
	return out
}

func eventData(t *testing.T, e event.Event) events.Data {
	t.Helper()
	var d events.Data
	if err := e.DataAs(&d); err != nil {
		t.Fatalf("event data: %v", err)
	}
	return d
}

func counter(t *testing.T, env *testserver.Env, name string) float64 {
	mfs, err := env.Server.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.Metric {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// Events for create, update, delete, near-expiry and expiry (a moved
// clock), received by a CloudEvents SDK receiver, signed, in order per
// object, without values, and delivered again after the receiver was down.
func TestEventsDeliveredAsCloudEvents(t *testing.T) {
	rcv := startReceiver(t)
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	env := testserver.Start(t, testserver.Options{Now: now, AllowPrivateEndpoints: true, EgressRoots: rcv.roots(),
		EventInterval: 20 * time.Millisecond, EventScanInterval: 50 * time.Millisecond})
	ctx := context.Background()
	var sub events.Subscription
	types := []string{"Microsoft.KeyVault.SecretNewVersionCreated", "Microsoft.KeyVault.SecretNearExpiry", "Microsoft.KeyVault.SecretExpired",
		"Coffer.KeyVault.SecretUpdated", "Coffer.KeyVault.SecretDeleted", "Microsoft.KeyVault.KeyNewVersionCreated", "Microsoft.KeyVault.CertificateNewVersionCreated",
		"Microsoft.KeyVault.CertificateNearExpiry", "Microsoft.KeyVault.KeyNearExpiry"}
	if err := env.Client.Manage(ctx, "PUT", "vaults/demo/event-subscriptions/all", mgmthttp.EventSubscriptionIn{Endpoint: rcv.url(), IncludedEventTypes: types}, &sub); err != nil {
		t.Fatal(err)
	}
	if sub.Secret == "" || len(sub.IncludedEventTypes) != len(types) {
		t.Fatalf("created subscription %+v", sub)
	}
	secret := []byte(sub.Secret)
	rcv.secret.Store(&secret)

	const value = "hunter2-never-in-an-event"
	exp := time.Now().Add(40 * 24 * time.Hour).Truncate(time.Second)
	sc := adminClient(t, env)
	v1, err := sc.SetSecret(ctx, "db", azsecrets.SetSecretParameters{Value: to.Ptr(value), SecretAttributes: &azsecrets.SecretAttributes{Expires: &exp}}, nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	created := rcv.await("Microsoft.KeyVault.SecretNewVersionCreated", "db")
	d := eventData(t, created)
	if d.VaultName != "demo" || d.ObjectType != "Secret" || d.ObjectName != "db" || d.Version != v1.ID.Version() ||
		d.ID != string(*v1.ID) || d.EXP == nil || *d.EXP != exp.Unix() || d.NBF != nil {
		t.Fatalf("event data %+v, for secret %s expiring %d", d, *v1.ID, exp.Unix())
	}
	if created.SpecVersion() != "1.0" || created.Source() != "/subscriptions/"+env.Subscription+"/resourceGroups/default/providers/Microsoft.KeyVault/vaults/demo" || created.ID() == "" {
		t.Fatalf("event envelope: specversion %s, source %s, id %q", created.SpecVersion(), created.Source(), created.ID())
	}
	if _, err := sc.UpdateSecretProperties(ctx, "db", "", azsecrets.UpdateSecretPropertiesParameters{Tags: map[string]*string{"team": to.Ptr("a")}}, nil); err != nil {
		t.Fatal(err)
	}
	rcv.await("Coffer.KeyVault.SecretUpdated", "db")
	v2, err := sc.SetSecret(ctx, "db", azsecrets.SetSecretParameters{Value: to.Ptr(value + "2"), SecretAttributes: &azsecrets.SecretAttributes{Expires: &exp}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(rcv.types("db")) < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// Other kinds: a key's version, and a certificate's, without events
	// for the certificate's managed key and secret.
	kc := keysClient(t, env)
	if _, err := kc.CreateKey(ctx, "k", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC)}, nil); err != nil {
		t.Fatal(err)
	}
	rcv.await("Microsoft.KeyVault.KeyNewVersionCreated", "k")
	// A key's Notify action sets its NearExpiry: 45 days before an exp 40
	// days away is now, where the default 30 days would be in 10.
	if _, err := kc.CreateKey(ctx, "kn", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), KeyAttributes: &azkeys.KeyAttributes{Expires: &exp}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.UpdateKeyRotationPolicy(ctx, "kn", azkeys.KeyRotationPolicy{LifetimeActions: []*azkeys.LifetimeAction{{
		Trigger: &azkeys.LifetimeActionTrigger{TimeBeforeExpiry: to.Ptr("P45D")},
		Action:  &azkeys.LifetimeActionType{Type: to.Ptr(azkeys.KeyRotationPolicyActionNotify)},
	}}}, nil); err != nil {
		t.Fatal(client.Describe(err))
	}
	rcv.await("Microsoft.KeyVault.KeyNearExpiry", "kn")
	cc := certsClient(t, env)
	if _, err := cc.CreateCertificate(ctx, "web", azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
		KeyProperties:             &azcertificates.KeyProperties{KeyType: to.Ptr(azcertificates.KeyTypeEC)},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=web")},
	}}, nil); err != nil {
		t.Fatal(err)
	}
	rcv.await("Microsoft.KeyVault.CertificateNewVersionCreated", "web")
	// An EmailContacts lifetime action sends, instead of mail, a
	// NearExpiry event at its trigger: here 25 days before the end of a
	// one-month certificate, so after the clock moves 11 days below.
	if _, err := cc.CreateCertificate(ctx, "mail", azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
		KeyProperties:             &azcertificates.KeyProperties{KeyType: to.Ptr(azcertificates.KeyTypeEC)},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=mail"), ValidityInMonths: to.Ptr[int32](1)},
		LifetimeActions: []*azcertificates.LifetimeAction{{Trigger: &azcertificates.LifetimeActionTrigger{DaysBeforeExpiry: to.Ptr[int32](25)},
			Action: &azcertificates.LifetimeActionType{ActionType: to.Ptr(azcertificates.CertificatePolicyActionEmailContacts)}}},
	}}, nil); err != nil {
		t.Fatal(err)
	}
	rcv.await("Microsoft.KeyVault.CertificateNewVersionCreated", "mail")
	if got := rcv.types("mail"); len(got) != 1 {
		t.Fatalf("events about mail before its trigger: %v", got)
	}

	// 11 days on, v2 expires in 29: NearExpiry. 41 days on: Expired.
	offset.Store(int64(11 * 24 * time.Hour))
	rcv.await("Microsoft.KeyVault.CertificateNearExpiry", "mail")
	near := rcv.await("Microsoft.KeyVault.SecretNearExpiry", "db")
	if eventData(t, near).Version != v2.ID.Version() {
		t.Fatalf("NearExpiry for version %s, want the current %s", eventData(t, near).Version, v2.ID.Version())
	}
	offset.Store(int64(41 * 24 * time.Hour))
	rcv.await("Microsoft.KeyVault.SecretExpired", "db")

	// The receiver goes down; the deletion's event waits, is retried, and
	// arrives once the receiver is back.
	rcv.stop()
	sc = adminClient(t, env) // the old token has expired by the server's clock
	if _, err := sc.DeleteSecret(ctx, "db", nil); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); counter(t, env, "coffer_events_failed_attempts_total") == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no delivery to the stopped receiver was attempted")
		}
	}
	rcv.start()
	rcv.await("Coffer.KeyVault.SecretDeleted", "db")

	want := []string{"Microsoft.KeyVault.SecretNewVersionCreated", "Coffer.KeyVault.SecretUpdated", "Microsoft.KeyVault.SecretNewVersionCreated",
		"Microsoft.KeyVault.SecretNearExpiry", "Microsoft.KeyVault.SecretExpired", "Coffer.KeyVault.SecretDeleted"}
	if got := rcv.types("db"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events about db, in order:\n got %v\nwant %v", got, want)
	}
	for _, typ := range rcv.types("web") {
		if typ != "Microsoft.KeyVault.CertificateNewVersionCreated" {
			t.Fatalf("a certificate's managed objects made a %s event", typ)
		}
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	seen := map[string]bool{}
	for i, b := range rcv.bodies {
		if bytes.Contains(b, []byte("hunter2")) {
			t.Fatalf("event %d carries a secret value: %s", i, b)
		}
		if id := rcv.got[i].ID(); seen[id] {
			t.Fatalf("event id %s delivered twice", id)
		} else {
			seen[id] = true
		}
	}
	if rcv.badSig != 0 {
		t.Fatalf("%d deliveries failed the signature check", rcv.badSig)
	}
}

// Subscriptions: their endpoints are checked (https, no internal address
// unless the operator allows it), their types known, their names unique;
// they list without secrets and delete.
func TestEventSubscriptions(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	put := func(name string, in mgmthttp.EventSubscriptionIn) error {
		return env.Client.Manage(ctx, "PUT", "vaults/demo/event-subscriptions/"+name, in, nil)
	}
	for why, in := range map[string]mgmthttp.EventSubscriptionIn{
		"plain http":        {Endpoint: "http://hooks.example.com/kv"},
		"loopback":          {Endpoint: "https://127.0.0.1:9000/kv"},
		"localhost":         {Endpoint: "https://localhost/kv"},
		"private":           {Endpoint: "https://10.1.2.3/kv"},
		"link-local (IMDS)": {Endpoint: "https://169.254.169.254/metadata"},
		"ipv6 loopback":     {Endpoint: "https://[::1]/kv"},
		"unknown type":      {Endpoint: "https://hooks.example.com/kv", IncludedEventTypes: []string{"Microsoft.KeyVault.SecretExploded"}},
	} {
		var me *client.ManagementError
		if err := put("bad", in); err == nil || !asManagement(err, &me) || me.Status != http.StatusBadRequest {
			t.Errorf("%s: %v, want 400", why, err)
		}
	}
	if err := put("x", mgmthttp.EventSubscriptionIn{Endpoint: "https://hooks.example.com/kv"}); err == nil {
		t.Error("a two-letter name was accepted")
	}
	if err := put("hooks", mgmthttp.EventSubscriptionIn{Endpoint: "https://hooks.example.com/kv"}); err != nil {
		t.Fatal(err)
	}
	var me *client.ManagementError
	if err := put("hooks", mgmthttp.EventSubscriptionIn{Endpoint: "https://hooks.example.com/kv"}); !asManagement(err, &me) || me.Status != http.StatusConflict {
		t.Fatalf("a second subscription of the name: %v, want 409", err)
	}
	var list struct{ Value []events.Subscription }
	if err := env.Client.Manage(ctx, "GET", "vaults/demo/event-subscriptions", nil, &list); err != nil || len(list.Value) != 1 || list.Value[0].Secret != "" {
		t.Fatalf("list = %+v, %v", list.Value, err)
	}
	if err := env.Client.Manage(ctx, "DELETE", "vaults/demo/event-subscriptions/hooks", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Manage(ctx, "GET", "vaults/demo/event-subscriptions/hooks", nil, nil); !asManagement(err, &me) || me.Status != http.StatusNotFound {
		t.Fatalf("a deleted subscription: %v, want 404", err)
	}
}

func asManagement(err error, me **client.ManagementError) bool {
	e, ok := err.(*client.ManagementError)
	*me = e
	return ok
}

// Access policy changes (`coffer vault set-policy` and `delete-policy`, run
// in-process) send one Microsoft.KeyVault.VaultAccessPolicyChanged each,
// with Event Grid's data, to a subscription with the default types and to
// one that names the type (made with the CLI's --included-event-types); a
// secret's write sends none.
func TestVaultAccessPolicyChangedEvents(t *testing.T) {
	all, named := startReceiver(t), startReceiver(t)
	env := testserver.Start(t, testserver.Options{AllowPrivateEndpoints: true, EgressRoots: all.roots(),
		EventInterval: 20 * time.Millisecond, EventScanInterval: 50 * time.Millisecond})
	ctx := context.Background()
	envFile := filepath.Join(t.TempDir(), "dev.env")
	if err := env.Admin.Write(envFile); err != nil {
		t.Fatal(err)
	}
	coffer := func(args ...string) []byte {
		t.Helper()
		var out, errb bytes.Buffer
		if code := cli.Main(append(args, "--env-file", envFile), strings.NewReader(""), &out, &errb); code != 0 {
			t.Fatalf("coffer %s: exit %d: %s%s", strings.Join(args, " "), code, out.String(), errb.String())
		}
		return out.Bytes()
	}
	const typ = "Microsoft.KeyVault.VaultAccessPolicyChanged"
	var sub events.Subscription
	if err := env.Client.Manage(ctx, "PUT", "vaults/demo/event-subscriptions/defaults", mgmthttp.EventSubscriptionIn{Endpoint: all.url()}, &sub); err != nil {
		t.Fatal(err)
	}
	secret := []byte(sub.Secret)
	all.secret.Store(&secret)
	out := coffer("vault", "event-subscription", "create", "--vault-name", "demo", "--name", "policies", "--endpoint", named.url(),
		"--included-event-types", "microsoft.keyvault.vaultaccesspolicychanged", "-o", "json")
	sub = events.Subscription{}
	if err := json.Unmarshal(out, &sub); err != nil || len(sub.IncludedEventTypes) != 1 || sub.IncludedEventTypes[0] != typ || sub.Secret == "" {
		t.Fatalf("the CLI's subscription: %s (%v), want types [%s] and a secret", out, err, typ)
	}
	namedSecret := []byte(sub.Secret)
	named.secret.Store(&namedSecret)
	sc := adminClient(t, env)
	write := func(name string) string {
		t.Helper()
		s, err := sc.SetSecret(ctx, name, azsecrets.SetSecretParameters{Value: to.Ptr("v")}, nil)
		if err != nil {
			t.Fatal(client.Describe(err))
		}
		all.await("Microsoft.KeyVault.SecretNewVersionCreated", name)
		return string(*s.ID)
	}
	const oid = "3c1d2b7e-0000-4000-8000-00000000a11c"
	awaitCount := func(r *ceReceiver, n int) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			got := 0
			for _, tp := range r.types("demo") {
				if tp == typ {
					got++
				}
			}
			if got == n {
				return
			}
			if got > n || time.Now().After(deadline) {
				t.Fatalf("%d %s events, want %d; got %v", got, typ, n, r.types(""))
			}
		}
	}

	id := write("before")
	coffer("vault", "set-policy", "--name", "demo", "--object-id", oid, "--secret-permissions", "get,list")
	awaitCount(all, 1)
	awaitCount(named, 1)
	e := all.await(typ, "demo")
	d := eventData(t, e)
	vaultURL := id[:strings.Index(id, "/secrets/")+1]
	if d.ID != vaultURL || d.VaultName != "demo" || d.ObjectType != "Vault" || d.ObjectName != "demo" || d.Version != "" || d.NBF != nil || d.EXP != nil {
		t.Fatalf("event data %+v, want the vault %s", d, vaultURL)
	}
	if e.Source() != "/subscriptions/"+env.Subscription+"/resourceGroups/default/providers/Microsoft.KeyVault/vaults/demo" {
		t.Fatalf("event source %s", e.Source())
	}
	write("between")
	coffer("vault", "delete-policy", "--name", "demo", "--object-id", oid)
	awaitCount(all, 2)
	awaitCount(named, 2)
	write("after")
	// Each subscription's events arrive in the order they were queued, so
	// by the last secret's event every earlier one is in.
	want := []string{"Microsoft.KeyVault.SecretNewVersionCreated", typ, "Microsoft.KeyVault.SecretNewVersionCreated", typ, "Microsoft.KeyVault.SecretNewVersionCreated"}
	if got := all.types(""); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events, in order:\n got %v\nwant %v", got, want)
	}
	if got := named.types(""); strings.Join(got, " ") != typ+" "+typ {
		t.Fatalf("the subscription naming %s got %v", typ, got)
	}
	for _, r := range []*ceReceiver{all, named} {
		r.mu.Lock()
		bad := r.badSig
		r.mu.Unlock()
		if bad != 0 {
			t.Fatalf("%d deliveries failed the signature check", bad)
		}
	}
}
