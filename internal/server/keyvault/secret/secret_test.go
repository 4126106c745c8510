package secret_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a secret service over the in-memory engine and a real barrier.
type env struct {
	svc   *secret.Service
	clock *clock
	b     *barrier.Barrier
}

func newEnv(t testing.TB) *env {
	t.Helper()
	b, err := barrier.Open(context.Background(), inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	return &env{svc: secret.New(b, b, clk.now), clock: clk, b: b}
}

func demo() *vault.Vault {
	return &vault.Vault{Name: "demo", TenantID: "tenant-1", SubscriptionID: "sub", RetentionDays: 7}
}

func ptr[T any](v T) *T { return &v }

// failure is the error a call should return: its sentinel, its inner
// code, and a part of its message; nil for success.
type failure struct {
	kind  error
	inner string
	msg   string
}

func checkErr(t *testing.T, err error, want *failure) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	var oe *object.Error
	if !errors.As(err, &oe) {
		t.Fatalf("error %v (%T), want an *object.Error of %v", err, err, want.kind)
	}
	if !errors.Is(err, want.kind) || oe.Inner != want.inner || !strings.Contains(oe.Message, want.msg) {
		t.Fatalf("error %v (inner %q), want %v with inner %q containing %q", err, oe.Inner, want.kind, want.inner, want.msg)
	}
}

func invalid(msg string) *failure { return &failure{kind: object.ErrInvalid, msg: msg} }

func TestSetValidation(t *testing.T) {
	tags := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("t%d", i)] = "v"
		}
		return m
	}
	for name, c := range map[string]struct {
		secret string
		p      secret.SetParams
		want   *failure
	}{
		"plain":                     {secret: "db-password", p: secret.SetParams{Value: ptr("v")}},
		"empty value":               {secret: "s", p: secret.SetParams{Value: ptr("")}},
		"no value":                  {secret: "s", p: secret.SetParams{}, want: invalid("must contain the secret's value")},
		"value at the limit":        {secret: "s", p: secret.SetParams{Value: ptr(strings.Repeat("x", secret.MaxValueBytes))}},
		"value over the limit":      {secret: "s", p: secret.SetParams{Value: ptr(strings.Repeat("x", secret.MaxValueBytes+1))}, want: invalid("25601 bytes; the limit is 25600")},
		"name of 127":               {secret: strings.Repeat("a", 127), p: secret.SetParams{Value: ptr("v")}},
		"name of 128":               {secret: strings.Repeat("a", 128), p: secret.SetParams{Value: ptr("v")}, want: invalid("invalid name")},
		"name with underscore":      {secret: "a_b", p: secret.SetParams{Value: ptr("v")}, want: invalid("invalid name")},
		"empty name":                {secret: "", p: secret.SetParams{Value: ptr("v")}, want: invalid("invalid name")},
		"content type of 255 runes": {secret: "s", p: secret.SetParams{Value: ptr("v"), ContentType: ptr(strings.Repeat("é", 255))}},
		"content type of 256 runes": {secret: "s", p: secret.SetParams{Value: ptr("v"), ContentType: ptr(strings.Repeat("é", 256))}, want: invalid("contentType is 256 characters")},
		"exp after nbf":             {secret: "s", p: secret.SetParams{Value: ptr("v"), NotBefore: ptr(int64(10)), Expires: ptr(int64(11))}},
		"exp at nbf":                {secret: "s", p: secret.SetParams{Value: ptr("v"), NotBefore: ptr(int64(10)), Expires: ptr(int64(10))}, want: invalid("must be later than attributes.nbf")},
		"15 tags":                   {secret: "s", p: secret.SetParams{Value: ptr("v"), Tags: tags(15)}},
		"16 tags":                   {secret: "s", p: secret.SetParams{Value: ptr("v"), Tags: tags(16)}, want: invalid("16 tags given; the limit is 15")},
		"empty tag name":            {secret: "s", p: secret.SetParams{Value: ptr("v"), Tags: map[string]string{"": "v"}}, want: invalid("tag name")},
		"tag name of 512":           {secret: "s", p: secret.SetParams{Value: ptr("v"), Tags: map[string]string{strings.Repeat("n", 512): "v"}}},
		"tag name of 513":           {secret: "s", p: secret.SetParams{Value: ptr("v"), Tags: map[string]string{strings.Repeat("n", 513): "v"}}, want: invalid("1 to 512 characters")},
		"tag value of 256":          {secret: "s", p: secret.SetParams{Value: ptr("v"), Tags: map[string]string{"k": strings.Repeat("v", 256)}}},
		"tag value of 257":          {secret: "s", p: secret.SetParams{Value: ptr("v"), Tags: map[string]string{"k": strings.Repeat("v", 257)}}, want: invalid("longer than 256")},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			got, err := e.svc.Set(context.Background(), demo(), c.secret, c.p)
			checkErr(t, err, c.want)
			if c.want != nil {
				return
			}
			if got.Value != *c.p.Value || len(got.Version) != 32 || !got.Attributes.Enabled || got.Attributes.Created != e.clock.now().Unix() {
				t.Errorf("%+v", got)
			}
			if s, err := e.svc.Get(context.Background(), demo(), c.secret, "", ""); err != nil || s.Value != *c.p.Value {
				t.Errorf("read back: %q %v", s.Value, err)
			}
		})
	}
}

// What Get answers for each state of a version.
func TestGet(t *testing.T) {
	now := int64(1_800_000_000)
	for name, c := range map[string]struct {
		p        secret.SetParams
		enforce  bool
		version  func(id string) string
		outType  string
		want     *failure
		wantBody string
	}{
		"latest":                           {p: secret.SetParams{Value: ptr("v")}, wantBody: "v"},
		"by version":                       {p: secret.SetParams{Value: ptr("v")}, version: func(id string) string { return id }, wantBody: "v"},
		"version in capitals":              {p: secret.SetParams{Value: ptr("v")}, version: strings.ToUpper, wantBody: "v"},
		"unknown version":                  {p: secret.SetParams{Value: ptr("v")}, version: func(string) string { return strings.Repeat("0", 32) }, want: &failure{kind: object.ErrNotFound, msg: "(name/id) S/" + strings.Repeat("0", 32) + " was not found"}},
		"malformed version":                {p: secret.SetParams{Value: ptr("v")}, version: func(string) string { return "v1" }, want: invalid("invalid version")},
		"disabled":                         {p: secret.SetParams{Value: ptr("v"), Enabled: ptr(false)}, want: &failure{kind: object.ErrForbidden, inner: "SecretDisabled", msg: "disabled secret"}},
		"not yet valid, not enforced":      {p: secret.SetParams{Value: ptr("v"), NotBefore: ptr(now + 60)}, wantBody: "v"},
		"not yet valid, enforced":          {p: secret.SetParams{Value: ptr("v"), NotBefore: ptr(now + 60)}, enforce: true, want: &failure{kind: object.ErrForbidden, inner: "SecretNotYetValid", msg: "not valid before"}},
		"valid from now, enforced":         {p: secret.SetParams{Value: ptr("v"), NotBefore: ptr(now)}, enforce: true, wantBody: "v"},
		"expired, not enforced":            {p: secret.SetParams{Value: ptr("v"), Expires: ptr(now - 1)}, wantBody: "v"},
		"expired, enforced":                {p: secret.SetParams{Value: ptr("v"), Expires: ptr(now - 1)}, enforce: true, want: &failure{kind: object.ErrForbidden, inner: "SecretExpired", msg: "expired at"}},
		"expiring at now, enforced":        {p: secret.SetParams{Value: ptr("v"), Expires: ptr(now)}, enforce: true, want: &failure{kind: object.ErrForbidden, inner: "SecretExpired"}},
		"outContentType on a plain secret": {p: secret.SetParams{Value: ptr("v")}, outType: "application/x-pem-file", want: invalid("certificate-backed secrets only")},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			v := demo()
			v.EnforceValidity = c.enforce
			set, err := e.svc.Set(context.Background(), v, "s", c.p)
			if err != nil {
				t.Fatal(err)
			}
			version := ""
			if c.version != nil {
				version = c.version(set.Version)
			}
			got, err := e.svc.Get(context.Background(), v, "S", version, c.outType)
			checkErr(t, err, c.want)
			if c.want == nil && (got.Value != c.wantBody || got.Version != set.Version || got.Name != "s") {
				t.Fatalf("%+v", got)
			}
		})
	}
	t.Run("no such secret", func(t *testing.T) {
		_, err := newEnv(t).svc.Get(context.Background(), demo(), "nope", "", "")
		checkErr(t, err, &failure{kind: object.ErrNotFound, msg: "A secret with (name/id) nope was not found"})
	})
	t.Run("another vault's", func(t *testing.T) {
		e := newEnv(t)
		if _, err := e.svc.Set(context.Background(), demo(), "s", secret.SetParams{Value: ptr("v")}); err != nil {
			t.Fatal(err)
		}
		other := demo()
		other.Name = "other"
		_, err := e.svc.Get(context.Background(), other, "s", "", "")
		checkErr(t, err, &failure{kind: object.ErrNotFound})
	})
}

func TestVersions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := demo()
	var ids []string
	for i := range 5 {
		s, err := e.svc.Set(ctx, v, "s", secret.SetParams{Value: ptr(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && s.PreviousVersion != ids[i-1] {
			t.Fatalf("set %d: previous %q, want %q", i, s.PreviousVersion, ids[i-1])
		}
		ids = append(ids, s.Version)
	}
	if cur, _ := e.svc.Get(ctx, v, "s", "", ""); cur.Value != "4" || cur.PreviousVersion != ids[3] {
		t.Fatalf("latest %+v", cur)
	}
	if old, _ := e.svc.Get(ctx, v, "s", ids[1], ""); old.Value != "1" || old.PreviousVersion != "" {
		t.Fatalf("an old version %+v: previousVersion belongs to the current one only", old)
	}
	seen := map[string]bool{}
	for after, pages := "", 0; ; pages++ {
		page, next, err := e.svc.ListVersions(ctx, v, "s", after, 2)
		if err != nil || len(page) > 2 || pages > 3 {
			t.Fatalf("page %d: %d versions, %v", pages, len(page), err)
		}
		for _, s := range page {
			if s.Value != "" || seen[s.Version] {
				t.Fatalf("version %s listed twice or with its value", s.Version)
			}
			seen[s.Version] = true
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(seen) != 5 {
		t.Fatalf("listed %d versions, want 5", len(seen))
	}
	if _, _, err := e.svc.ListVersions(ctx, v, "nope", "", 10); !errors.Is(err, object.ErrNotFound) {
		t.Fatalf("versions of a missing secret: %v", err)
	}
}

func TestList(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := demo()
	for _, n := range []string{"delta", "Alpha", "charlie", "bravo", "echo"} {
		if _, err := e.svc.Set(ctx, v, n, secret.SetParams{Value: ptr("v-" + n)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.svc.Delete(ctx, v, "charlie"); err != nil {
		t.Fatal(err)
	}
	var names []string
	for after := ""; ; {
		page, next, err := e.svc.List(ctx, v, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page {
			if s.Value != "" {
				t.Fatal("a list carries a value")
			}
			names = append(names, s.Name)
		}
		if next == "" {
			break
		}
		after = next
	}
	if got := strings.Join(names, ","); got != "Alpha,bravo,delta,echo" {
		t.Fatalf("listed %s, want the live secrets in name order, as first written", got)
	}
	deleted, _, err := e.svc.ListDeleted(ctx, v, "", 10)
	if err != nil || len(deleted) != 1 || deleted[0].Name != "charlie" || deleted[0].Value != "" {
		t.Fatalf("deleted %+v %v", deleted, err)
	}
}

func TestUpdate(t *testing.T) {
	for name, c := range map[string]struct {
		p     secret.UpdateParams
		check func(t *testing.T, s secret.Secret)
		want  *failure
	}{
		"content type": {p: secret.UpdateParams{ContentType: ptr("text/plain")}, check: func(t *testing.T, s secret.Secret) {
			if s.ContentType != "text/plain" || s.Tags["a"] != "1" || !s.Attributes.Enabled {
				t.Errorf("%+v", s)
			}
		}},
		"disable": {p: secret.UpdateParams{Enabled: ptr(false)}, check: func(t *testing.T, s secret.Secret) {
			if s.Attributes.Enabled || s.ContentType != "c" {
				t.Errorf("%+v", s)
			}
		}},
		"replace tags": {p: secret.UpdateParams{Tags: map[string]string{"b": "2"}}, check: func(t *testing.T, s secret.Secret) {
			if len(s.Tags) != 1 || s.Tags["b"] != "2" {
				t.Errorf("tags %v", s.Tags)
			}
		}},
		"remove tags": {p: secret.UpdateParams{Tags: map[string]string{}}, check: func(t *testing.T, s secret.Secret) {
			if len(s.Tags) != 0 {
				t.Errorf("tags %v", s.Tags)
			}
		}},
		"exp before the stored nbf": {p: secret.UpdateParams{Expires: ptr(int64(5))}, want: invalid("must be later than attributes.nbf (10)")},
		"too long a content type":   {p: secret.UpdateParams{ContentType: ptr(strings.Repeat("c", 256))}, want: invalid("contentType")},
		"too many tags": {p: secret.UpdateParams{Tags: func() map[string]string {
			m := map[string]string{}
			for i := range 16 {
				m[fmt.Sprint(i)] = ""
			}
			return m
		}()}, want: invalid("16 tags")},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			set, err := e.svc.Set(ctx, demo(), "s", secret.SetParams{Value: ptr("v"), ContentType: ptr("c"), Tags: map[string]string{"a": "1"}, NotBefore: ptr(int64(10))})
			if err != nil {
				t.Fatal(err)
			}
			e.clock.add(time.Minute)
			got, err := e.svc.Update(ctx, demo(), "s", set.Version, c.p)
			checkErr(t, err, c.want)
			if c.want != nil {
				return
			}
			if got.Value != "" || got.Attributes.Updated != e.clock.now().Unix() || got.Attributes.Created != set.Attributes.Created {
				t.Errorf("update answered %+v: want properties only, updated now", got)
			}
			c.check(t, got)
			// The change is stored, and the value is untouched.
			read, err := e.svc.Get(ctx, demo(), "s", set.Version, "")
			if err == nil {
				c.check(t, read)
				if read.Value != "v" {
					t.Errorf("value %q after an update", read.Value)
				}
			} else if !errors.Is(err, object.ErrForbidden) { // disabled
				t.Fatal(err)
			}
		})
	}
	t.Run("no such version", func(t *testing.T) {
		_, err := newEnv(t).svc.Update(context.Background(), demo(), "s", "", secret.UpdateParams{})
		checkErr(t, err, &failure{kind: object.ErrNotFound})
	})
}

// The soft-delete lifecycle, step by step, on a vault with and without
// purge protection.
func TestLifecycle(t *testing.T) {
	type step struct {
		op   string
		want *failure
	}
	conflict := &failure{kind: object.ErrDeleted, inner: "ObjectIsDeletedButRecoverable", msg: "deleted but recoverable"}
	notFound := &failure{kind: object.ErrNotFound, msg: "was not found"}
	deletedNotFound := &failure{kind: object.ErrNotFound, msg: "Deleted Secret not found: s"}
	for name, c := range map[string]struct {
		protected bool
		steps     []step
	}{
		"delete and recover": {steps: []step{
			{"set", nil}, {"delete", nil}, {"get", notFound}, {"get-deleted", nil}, {"set", conflict}, {"delete", notFound},
			{"recover", nil}, {"get", nil}, {"get-deleted", deletedNotFound}, {"recover", deletedNotFound},
		}},
		"delete and purge": {steps: []step{
			{"set", nil}, {"purge", deletedNotFound}, {"delete", nil}, {"purge", nil}, {"get-deleted", deletedNotFound}, {"recover", deletedNotFound}, {"set", nil},
		}},
		"purge protection": {protected: true, steps: []step{
			{"set", nil}, {"delete", nil}, {"purge", &failure{kind: object.ErrForbidden, msg: "purge protection is enabled"}}, {"get-deleted", nil}, {"recover", nil},
		}},
		"retention passes": {steps: []step{
			{"set", nil}, {"delete", nil}, {"purge-due 0", nil}, {"get-deleted", nil}, {"wait-retention", nil}, {"purge-due 1", nil}, {"get-deleted", deletedNotFound}, {"set", nil},
		}},
		"retention passes, protected": {protected: true, steps: []step{
			{"set", nil}, {"delete", nil}, {"wait-retention", nil}, {"purge-due 1", nil}, {"get-deleted", deletedNotFound},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			v := demo()
			v.PurgeProtection = c.protected
			for i, s := range c.steps {
				var err error
				switch s.op {
				case "set":
					_, err = e.svc.Set(ctx, v, "s", secret.SetParams{Value: ptr("v")})
				case "get":
					_, err = e.svc.Get(ctx, v, "s", "", "")
				case "delete":
					var d secret.Deleted
					d, err = e.svc.Delete(ctx, v, "s")
					if err == nil && (d.DeletedDate != e.clock.now().Unix() || d.ScheduledPurge != e.clock.now().Add(v.Retention()).Unix() || d.Value != "") {
						t.Fatalf("step %d: deleted %+v", i, d)
					}
				case "get-deleted":
					_, err = e.svc.GetDeleted(ctx, v, "s")
				case "recover":
					_, err = e.svc.Recover(ctx, v, "s")
				case "purge":
					err = e.svc.Purge(ctx, v, "s")
				case "purge-due 0", "purge-due 1":
					var n int
					n, err = e.svc.PurgeDue(ctx, v)
					if want := s.op[len(s.op)-1:]; err == nil && fmt.Sprint(n) != want {
						t.Fatalf("step %d: purged %d, want %s", i, n, want)
					}
				case "wait-retention":
					e.clock.add(v.Retention())
				}
				func() {
					defer func() {
						if t.Failed() {
							t.Logf("at step %d (%s)", i, s.op)
						}
					}()
					checkErr(t, err, s.want)
				}()
			}
		})
	}
}

// A secret whose lifetime a certificate manages is changed through the
// certificate only.
func TestManaged(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := demo()
	if _, _, err := e.svc.Collection().Create(ctx, v.Name, "cert", func(*object.Version[secret.Data]) (object.Version[secret.Data], error) {
		return object.Version[secret.Data]{Attributes: object.Attributes{Enabled: true}, Managed: true, Data: secret.Data{Value: "pem"}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	managed := &failure{kind: object.ErrForbidden, inner: "SecretManagedByKeyVault", msg: "certificate cert instead"}
	_, err := e.svc.Set(ctx, v, "cert", secret.SetParams{Value: ptr("x")})
	checkErr(t, err, managed)
	_, err = e.svc.Update(ctx, v, "cert", "", secret.UpdateParams{Enabled: ptr(false)})
	checkErr(t, err, managed)
	_, err = e.svc.Delete(ctx, v, "cert")
	checkErr(t, err, managed)
	if s, err := e.svc.Get(ctx, v, "cert", "", ""); err != nil || !s.Managed || s.Value != "pem" {
		t.Fatalf("%+v %v", s, err)
	}
	_, err = e.svc.Get(ctx, v, "cert", "", "text/plain")
	checkErr(t, err, invalid("must be application/x-pkcs12 or application/x-pem-file"))
}

func TestBackupRestore(t *testing.T) {
	ctx := context.Background()
	prepare := func(t *testing.T) (*env, []byte) {
		e := newEnv(t)
		for _, val := range []string{"one", "two"} {
			if _, err := e.svc.Set(ctx, demo(), "s", secret.SetParams{Value: ptr(val), Tags: map[string]string{"k": val}}); err != nil {
				t.Fatal(err)
			}
		}
		blob, err := e.svc.Backup(ctx, demo(), "s")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(blob), "one") || strings.Contains(string(blob), "two") {
			t.Fatal("the backup blob holds a value in the clear")
		}
		return e, blob
	}
	gone := func(t *testing.T, e *env) {
		if _, err := e.svc.Delete(ctx, demo(), "s"); err != nil {
			t.Fatal(err)
		}
		if err := e.svc.Purge(ctx, demo(), "s"); err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range map[string]struct {
		before func(t *testing.T, e *env)
		into   func() *vault.Vault
		blob   func(t *testing.T, e *env, b []byte) []byte
		want   *failure
	}{
		"after a purge":            {before: gone},
		"into another vault":       {into: func() *vault.Vault { v := demo(); v.Name = "other"; return v }},
		"while it exists":          {want: &failure{kind: object.ErrExists, msg: "already exists"}},
		"while it is soft-deleted": {before: func(t *testing.T, e *env) { e.svc.Delete(ctx, demo(), "s") }, want: &failure{kind: object.ErrExists}},
		"into another tenant": {before: gone, into: func() *vault.Vault { v := demo(); v.TenantID = "tenant-2"; return v },
			want: invalid("belongs to tenant tenant-1")},
		"a corrupt blob":   {before: gone, blob: func(_ *testing.T, _ *env, b []byte) []byte { b[len(b)/2] ^= 1; return b }, want: invalid("could not be opened")},
		"a truncated blob": {before: gone, blob: func(_ *testing.T, _ *env, b []byte) []byte { return b[:len(b)-1] }, want: invalid("could not be opened")},
		// The same contents sealed as a key backup: the purpose is bound
		// into the seal, so it does not open as a secret's.
		"another kind's blob": {before: gone, blob: func(t *testing.T, e *env, b []byte) []byte {
			plain, err := e.b.Unseal("backup/secrets/v2", b)
			if err != nil {
				t.Fatal(err)
			}
			return e.b.Seal("backup/keys/v2", plain)
		}, want: invalid("could not be opened")},
	} {
		t.Run(name, func(t *testing.T) {
			e, blob := prepare(t)
			if c.before != nil {
				c.before(t, e)
			}
			into := demo()
			if c.into != nil {
				into = c.into()
			}
			if c.blob != nil {
				blob = c.blob(t, e, blob)
			}
			got, err := e.svc.Restore(ctx, into, blob)
			checkErr(t, err, c.want)
			if c.want != nil {
				return
			}
			if got.Name != "s" || got.Value != "" {
				t.Fatalf("restored %+v", got)
			}
			read, err := e.svc.Get(ctx, into, "s", "", "")
			if err != nil || read.Value != "two" || read.Tags["k"] != "two" {
				t.Fatalf("read back %+v %v", read, err)
			}
			vers, _, err := e.svc.ListVersions(ctx, into, "s", "", 10)
			if err != nil || len(vers) != 2 {
				t.Fatalf("%d versions restored, want 2 (%v)", len(vers), err)
			}
		})
	}
	t.Run("another installation's blob", func(t *testing.T) {
		_, blob := prepare(t)
		other := newEnv(t)
		_, err := other.svc.Restore(ctx, demo(), blob)
		checkErr(t, err, invalid("from another Coffer installation"))
	})
	t.Run("no such secret", func(t *testing.T) {
		_, err := newEnv(t).svc.Backup(ctx, demo(), "nope")
		checkErr(t, err, &failure{kind: object.ErrNotFound})
	})
}
