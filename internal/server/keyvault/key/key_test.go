package key_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
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

type env struct {
	svc   *key.Service
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
	return &env{svc: key.New(b, b, clk.now), clock: clk, b: b}
}

func demo() *vault.Vault {
	return &vault.Vault{Name: "demo", TenantID: "tenant-1", SubscriptionID: "sub", RetentionDays: 7}
}

func ptr[T any](v T) *T { return &v }

type failure struct {
	kind  error
	inner string
	msg   string
}

func invalid(msg string) *failure { return &failure{kind: object.ErrInvalid, msg: msg} }

func forbidden(inner, msg string) *failure {
	return &failure{kind: object.ErrForbidden, inner: inner, msg: msg}
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

// rsaJWK is one RSA key for the tests that need one: generating RSA keys
// would dominate the package's time.
var rsaJWK = sync.OnceValue(func() keyops.JWK {
	m, err := keyops.Generate(keyops.RSA, 2048, "")
	if err != nil {
		panic(err)
	}
	return m.PrivateJWK()
})

func hasPrivate(j keyops.JWK) bool {
	return len(j.D) > 0 || len(j.P) > 0 || len(j.Q) > 0 || len(j.DP) > 0 || len(j.DQ) > 0 || len(j.QI) > 0 || len(j.K) > 0
}

func TestCreate(t *testing.T) {
	tags := map[string]string{}
	for i := range 16 {
		tags[fmt.Sprint(i)] = "v"
	}
	for name, c := range map[string]struct {
		name string
		p    key.CreateParams
		ops  []string
		want *failure
	}{
		"EC, default curve":     {p: key.CreateParams{Kty: "EC"}, ops: []string{"sign", "verify"}},
		"EC P-384":              {p: key.CreateParams{Kty: "EC", Crv: "P-384"}, ops: []string{"sign", "verify"}},
		"EC P-256K":             {p: key.CreateParams{Kty: "EC", Crv: "P-256K"}, ops: []string{"sign", "verify"}},
		"EC with a size":        {p: key.CreateParams{Kty: "EC", Size: 256}, want: invalid("not a key size")},
		"EC, unknown curve":     {p: key.CreateParams{Kty: "EC", Crv: "P-192"}, want: invalid(`curve "P-192" is not supported`)},
		"oct, default size":     {p: key.CreateParams{Kty: "oct"}, ops: []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"}},
		"oct 128":               {p: key.CreateParams{Kty: "oct", Size: 128}, ops: []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"}},
		"oct 512":               {p: key.CreateParams{Kty: "oct", Size: 512}, want: invalid("oct key size 512")},
		"RSA 1024":              {p: key.CreateParams{Kty: "RSA", Size: 1024}, want: invalid("RSA key size 1024")},
		"an HSM type":           {p: key.CreateParams{Kty: "EC-HSM"}, want: invalid("needs a hardware security module")},
		"unknown type":          {p: key.CreateParams{Kty: "DSA"}, want: invalid(`unknown key type "DSA"`)},
		"chosen ops":            {p: key.CreateParams{Kty: "EC", Attrs: key.Attrs{KeyOps: []string{"verify"}}}, ops: []string{"verify"}},
		"repeated ops":          {p: key.CreateParams{Kty: "EC", Attrs: key.Attrs{KeyOps: []string{"sign", "sign", "verify"}}}, ops: []string{"sign", "verify"}},
		"no ops":                {p: key.CreateParams{Kty: "EC", Attrs: key.Attrs{KeyOps: []string{}}}, ops: []string{}},
		"an op of another type": {p: key.CreateParams{Kty: "EC", Attrs: key.Attrs{KeyOps: []string{"encrypt"}}}, want: invalid(`key_ops "encrypt" does not apply to a EC key`)},
		"exp at nbf":            {p: key.CreateParams{Kty: "EC", Attrs: key.Attrs{NotBefore: ptr(int64(5)), Expires: ptr(int64(5))}}, want: invalid("must be later than attributes.nbf")},
		"16 tags":               {p: key.CreateParams{Kty: "EC", Attrs: key.Attrs{Tags: tags}}, want: invalid("16 tags given; the limit is 15")},
		"bad name":              {name: "a.b", p: key.CreateParams{Kty: "EC"}, want: invalid("invalid name")},
		"disabled":              {p: key.CreateParams{Kty: "EC", Attrs: key.Attrs{Enabled: ptr(false)}}, ops: []string{"sign", "verify"}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			n := c.name
			if n == "" {
				n = "k"
			}
			k, err := e.svc.Create(context.Background(), demo(), n, c.p)
			checkErr(t, err, c.want)
			if c.want != nil {
				return
			}
			if !slices.Equal(k.KeyOps, c.ops) || !slices.Equal(k.Public.KeyOps, c.ops) || len(k.Version) != 32 || k.Name != n {
				t.Errorf("%+v, want ops %v", k, c.ops)
			}
			if k.Public.Kty != c.p.Kty || hasPrivate(k.Public) {
				t.Errorf("public JWK %+v: want a %s key without private members", k.Public, c.p.Kty)
			}
			if enabled := c.p.Enabled == nil || *c.p.Enabled; k.Attributes.Enabled != enabled {
				t.Errorf("enabled %v, want %v", k.Attributes.Enabled, enabled)
			}
		})
	}
}

func TestImport(t *testing.T) {
	ec, err := keyops.Generate(keyops.EC, 0, "P-256")
	if err != nil {
		t.Fatal(err)
	}
	withOps := ec.PrivateJWK()
	withOps.KeyOps = []string{"verify"}
	for name, c := range map[string]struct {
		jwk   keyops.JWK
		attrs key.Attrs
		ops   []string
		want  *failure
	}{
		"RSA":                      {jwk: rsaJWK(), ops: keyops.DefaultOps(keyops.RSA)},
		"EC":                       {jwk: ec.PrivateJWK(), ops: []string{"sign", "verify"}},
		"the JWK's own key_ops":    {jwk: withOps, ops: []string{"verify"}},
		"attrs win over the JWK's": {jwk: withOps, attrs: key.Attrs{KeyOps: []string{"sign"}}, ops: []string{"sign"}},
		"public half only":         {jwk: ec.PublicJWK(), want: invalid("The key to import is not valid")},
		"unknown type":             {jwk: keyops.JWK{Kty: "DSA"}, want: invalid("The key to import is not valid")},
		"ops of another type":      {jwk: ec.PrivateJWK(), attrs: key.Attrs{KeyOps: []string{"wrapKey"}}, want: invalid(`key_ops "wrapKey"`)},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			k, err := e.svc.Import(context.Background(), demo(), "k", c.jwk, c.attrs)
			checkErr(t, err, c.want)
			if c.want != nil {
				return
			}
			if !slices.Equal(k.KeyOps, c.ops) || hasPrivate(k.Public) || k.Public.Kty != c.jwk.Kty {
				t.Errorf("%+v, want ops %v and no private members", k, c.ops)
			}
			if c.jwk.Kty == keyops.EC && (!bytes.Equal(k.Public.X, c.jwk.X) || !bytes.Equal(k.Public.Y, c.jwk.Y)) {
				t.Error("the stored key is not the imported one")
			}
		})
	}
}

// Operate enforces enabled, key_ops and, for the operations that protect
// new data, nbf/exp; verify, decrypt and unwrapKey still work outside the
// validity window.
func TestOperate(t *testing.T) {
	digest := sha256.Sum256([]byte("message"))
	now := int64(1_800_000_000)
	for name, c := range map[string]struct {
		kty   string
		attrs key.Attrs
		op    string
		alg   string
		want  *failure
	}{
		"sign":                     {kty: "EC", op: key.Sign, alg: "ES256"},
		"sign with another alg":    {kty: "EC", op: key.Sign, alg: "RS256", want: invalid("RS256")},
		"sign, disabled":           {kty: "EC", attrs: key.Attrs{Enabled: ptr(false)}, op: key.Sign, alg: "ES256", want: forbidden("KeyDisabled", "Operation sign is not allowed on a disabled key")},
		"verify, disabled":         {kty: "EC", attrs: key.Attrs{Enabled: ptr(false)}, op: key.Verify, alg: "ES256", want: forbidden("KeyDisabled", "")},
		"sign, not in key_ops":     {kty: "EC", attrs: key.Attrs{KeyOps: []string{"verify"}}, op: key.Sign, alg: "ES256", want: forbidden("KeyOperationForbidden", "its key_ops are [verify]")},
		"sign, not yet valid":      {kty: "EC", attrs: key.Attrs{NotBefore: ptr(now + 1)}, op: key.Sign, alg: "ES256", want: forbidden("KeyNotYetValid", "not valid before")},
		"sign, expired":            {kty: "EC", attrs: key.Attrs{Expires: ptr(now)}, op: key.Sign, alg: "ES256", want: forbidden("KeyExpired", "expired at")},
		"verify, expired":          {kty: "EC", attrs: key.Attrs{Expires: ptr(now)}, op: key.Verify, alg: "ES256"},
		"verify, not yet valid":    {kty: "EC", attrs: key.Attrs{NotBefore: ptr(now + 1)}, op: key.Verify, alg: "ES256"},
		"encrypt":                  {kty: "oct", op: key.Encrypt, alg: "A256GCM"},
		"encrypt, expired":         {kty: "oct", attrs: key.Attrs{Expires: ptr(now - 5)}, op: key.Encrypt, alg: "A256GCM", want: forbidden("KeyExpired", "")},
		"decrypt, expired":         {kty: "oct", attrs: key.Attrs{Expires: ptr(now - 5)}, op: key.Decrypt, alg: "A256GCM"},
		"wrapKey":                  {kty: "oct", op: key.WrapKey, alg: "A256KW"},
		"wrapKey, not yet valid":   {kty: "oct", attrs: key.Attrs{NotBefore: ptr(now + 60)}, op: key.WrapKey, alg: "A256KW", want: forbidden("KeyNotYetValid", "")},
		"unwrapKey, not yet valid": {kty: "oct", attrs: key.Attrs{NotBefore: ptr(now + 60)}, op: key.UnwrapKey, alg: "A256KW"},
		"RSA wrapKey":              {kty: "RSA", op: key.WrapKey, alg: "RSA-OAEP-256"},
		"RSA decrypt":              {kty: "RSA", op: key.Decrypt, alg: "RSA-OAEP"},
		"sign on an oct key":       {kty: "oct", op: key.Sign, alg: "ES256", want: forbidden("KeyOperationForbidden", "")},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			v := demo()
			// Made usable first, to prepare the data that the operation
			// under test reads; then given the attributes under test.
			var err error
			if c.kty == "RSA" {
				_, err = e.svc.Import(ctx, v, "k", rsaJWK(), key.Attrs{})
			} else {
				_, err = e.svc.Create(ctx, v, "k", key.CreateParams{Kty: c.kty})
			}
			if err != nil {
				t.Fatal(err)
			}
			var p keyops.Params
			var sig []byte
			switch c.op {
			case key.Sign:
				p.Value = digest[:]
			case key.Verify:
				p.Value = digest[:]
				_, r, err := e.svc.Operate(ctx, v, "k", "", key.Sign, c.alg, p, nil)
				if err != nil {
					t.Fatal(err)
				}
				sig = r.Value
			case key.Encrypt, key.WrapKey:
				p.Value = bytes.Repeat([]byte{7}, 32)
			case key.Decrypt, key.UnwrapKey:
				prep := map[string]string{key.Decrypt: key.Encrypt, key.UnwrapKey: key.WrapKey}[c.op]
				_, r, err := e.svc.Operate(ctx, v, "k", "", prep, c.alg, keyops.Params{Value: bytes.Repeat([]byte{7}, 32), AAD: []byte("aad")}, nil)
				if err != nil {
					t.Fatal(err)
				}
				p = keyops.Params{Value: r.Value, IV: r.IV, Tag: r.Tag, AAD: r.AAD}
			}
			if _, err := e.svc.Update(ctx, v, "k", "", c.attrs); err != nil {
				t.Fatal(err)
			}
			k, r, err := e.svc.Operate(ctx, v, "k", "", c.op, c.alg, p, sig)
			checkErr(t, err, c.want)
			if c.want != nil {
				return
			}
			if k.Name != "k" || len(k.Version) != 32 {
				t.Errorf("key %+v", k)
			}
			switch c.op {
			case key.Verify:
				if r.Verified == nil || !*r.Verified {
					t.Error("the signature did not verify")
				}
			case key.Decrypt, key.UnwrapKey:
				if !bytes.Equal(r.Value, bytes.Repeat([]byte{7}, 32)) {
					t.Error("the round trip lost the plaintext")
				}
			default:
				if len(r.Value) == 0 || bytes.Equal(r.Value, p.Value) {
					t.Errorf("result %x", r.Value)
				}
			}
		})
	}
	t.Run("a tampered signature", func(t *testing.T) {
		e := newEnv(t)
		ctx := context.Background()
		if _, err := e.svc.Create(ctx, demo(), "k", key.CreateParams{Kty: "EC"}); err != nil {
			t.Fatal(err)
		}
		_, r, err := e.svc.Operate(ctx, demo(), "k", "", key.Sign, "ES256", keyops.Params{Value: digest[:]}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Value[0] ^= 1
		_, v, err := e.svc.Operate(ctx, demo(), "k", "", key.Verify, "ES256", keyops.Params{Value: digest[:]}, r.Value)
		if err != nil || v.Verified == nil || *v.Verified {
			t.Fatalf("%+v %v, want verified=false", v, err)
		}
	})
}

func TestGetAndVersions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := demo()
	k1, err := e.svc.Create(ctx, v, "k", key.CreateParams{Kty: "EC", Attrs: key.Attrs{KeyOps: []string{"verify"}, Tags: map[string]string{"t": "1"}}})
	if err != nil {
		t.Fatal(err)
	}
	k2, err := e.svc.Rotate(ctx, v, "k")
	if err != nil {
		t.Fatal(err)
	}
	if k2.Version == k1.Version || !slices.Equal(k2.KeyOps, []string{"verify"}) || k2.Tags["t"] != "1" || k2.Public.Crv != "P-256" || bytes.Equal(k2.Public.X, k1.Public.X) {
		t.Fatalf("rotated to %+v: want new material of the same curve, ops and tags", k2)
	}
	for name, c := range map[string]struct {
		version string
		wantVer string
		want    *failure
	}{
		"latest":          {wantVer: k2.Version},
		"first":           {version: k1.Version, wantVer: k1.Version},
		"unknown version": {version: strings.Repeat("a", 32), want: &failure{kind: object.ErrNotFound, msg: "A key with (name/id) k/" + strings.Repeat("a", 32)}},
		"bad version":     {version: "1", want: invalid("invalid version")},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := e.svc.Get(ctx, v, "k", c.version)
			checkErr(t, err, c.want)
			if c.want == nil && got.Version != c.wantVer {
				t.Fatalf("version %s, want %s", got.Version, c.wantVer)
			}
		})
	}
	vers, next, err := e.svc.ListVersions(ctx, v, "k", "", 1)
	if err != nil || len(vers) != 1 || next == "" {
		t.Fatalf("first page %d %q %v", len(vers), next, err)
	}
	rest, next, err := e.svc.ListVersions(ctx, v, "k", next, 1)
	if err != nil || len(rest) != 1 || next != "" || rest[0].Version == vers[0].Version {
		t.Fatalf("second page %+v %q %v", rest, next, err)
	}
	if _, err := e.svc.Update(ctx, v, "k", k1.Version, key.Attrs{Enabled: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Get(ctx, v, "k", k1.Version)
	checkErr(t, err, forbidden("KeyDisabled", "disabled key"))
	if _, err := e.svc.Get(ctx, v, "k", ""); err != nil {
		t.Fatalf("disabling an old version disabled the current one: %v", err)
	}
	_, err = e.svc.Rotate(ctx, v, "nope")
	checkErr(t, err, &failure{kind: object.ErrNotFound})
}

func TestUpdate(t *testing.T) {
	for name, c := range map[string]struct {
		a     key.Attrs
		check func(t *testing.T, k key.Key)
		want  *failure
	}{
		"ops":                       {a: key.Attrs{KeyOps: []string{"verify"}}, check: func(t *testing.T, k key.Key) { want(t, slices.Equal(k.KeyOps, []string{"verify"}), "ops %v", k.KeyOps) }},
		"ops kept":                  {a: key.Attrs{Tags: map[string]string{"a": "b"}}, check: func(t *testing.T, k key.Key) { want(t, len(k.KeyOps) == 2 && k.Tags["a"] == "b", "%+v", k) }},
		"tags removed":              {a: key.Attrs{Tags: map[string]string{}}, check: func(t *testing.T, k key.Key) { want(t, len(k.Tags) == 0, "tags %v", k.Tags) }},
		"expiry":                    {a: key.Attrs{Expires: ptr(int64(2_000_000_000))}, check: func(t *testing.T, k key.Key) { want(t, *k.Attributes.Expires == 2_000_000_000, "%+v", k.Attributes) }},
		"an op of another type":     {a: key.Attrs{KeyOps: []string{"decrypt"}}, want: invalid(`key_ops "decrypt"`)},
		"exp before the stored nbf": {a: key.Attrs{Expires: ptr(int64(50))}, want: invalid("attributes.exp (50) must be later than attributes.nbf (100)")},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			if _, err := e.svc.Create(ctx, demo(), "k", key.CreateParams{Kty: "EC", Attrs: key.Attrs{NotBefore: ptr(int64(100)), Tags: map[string]string{"t": "1"}}}); err != nil {
				t.Fatal(err)
			}
			e.clock.add(time.Hour)
			k, err := e.svc.Update(ctx, demo(), "k", "", c.a)
			checkErr(t, err, c.want)
			if c.want != nil {
				return
			}
			c.check(t, k)
			if k.Attributes.Updated != e.clock.now().Unix() {
				t.Errorf("updated %d, want now", k.Attributes.Updated)
			}
			got, err := e.svc.Get(ctx, demo(), "k", "")
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, got)
		})
	}
}

func want(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Errorf(format, args...)
	}
}

func TestLifecycle(t *testing.T) {
	conflict := &failure{kind: object.ErrDeleted, inner: "ObjectIsDeletedButRecoverable", msg: "Key k is currently in a deleted but recoverable state"}
	notFound := &failure{kind: object.ErrNotFound, msg: "A key with (name/id) k was not found"}
	deletedNotFound := &failure{kind: object.ErrNotFound, msg: "Deleted Key not found: k"}
	type step struct {
		op   string
		want *failure
	}
	for name, c := range map[string]struct {
		protected bool
		steps     []step
	}{
		"delete and recover": {steps: []step{
			{"create", nil}, {"delete", nil}, {"get", notFound}, {"operate", notFound}, {"create", conflict}, {"import", conflict}, {"rotate", notFound},
			{"get-deleted", nil}, {"list-deleted 1", nil}, {"recover", nil}, {"get", nil}, {"operate", nil}, {"list-deleted 0", nil}, {"recover", deletedNotFound},
		}},
		"delete and purge": {steps: []step{
			{"create", nil}, {"purge", deletedNotFound}, {"delete", nil}, {"purge", nil}, {"get-deleted", deletedNotFound}, {"create", nil},
		}},
		"purge protection": {protected: true, steps: []step{
			{"create", nil}, {"delete", nil}, {"purge", forbidden("", "purge protection is enabled for this vault")}, {"recover", nil},
		}},
		"retention": {steps: []step{
			{"create", nil}, {"delete", nil}, {"purge-due 0", nil}, {"wait", nil}, {"purge-due 1", nil}, {"get-deleted", deletedNotFound},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			v := demo()
			v.PurgeProtection = c.protected
			ec, _ := keyops.Generate(keyops.EC, 0, "")
			digest := sha256.Sum256(nil)
			for i, s := range c.steps {
				var err error
				switch s.op {
				case "create":
					_, err = e.svc.Create(ctx, v, "k", key.CreateParams{Kty: "EC"})
				case "import":
					_, err = e.svc.Import(ctx, v, "k", ec.PrivateJWK(), key.Attrs{})
				case "rotate":
					_, err = e.svc.Rotate(ctx, v, "k")
				case "get":
					_, err = e.svc.Get(ctx, v, "k", "")
				case "operate":
					_, _, err = e.svc.Operate(ctx, v, "k", "", key.Sign, "ES256", keyops.Params{Value: digest[:]}, nil)
				case "delete":
					var d key.Deleted
					d, err = e.svc.Delete(ctx, v, "k")
					if err == nil && (d.DeletedDate != e.clock.now().Unix() || d.ScheduledPurge != e.clock.now().Add(v.Retention()).Unix() || hasPrivate(d.Public)) {
						t.Fatalf("step %d: deleted %+v", i, d)
					}
				case "get-deleted":
					_, err = e.svc.GetDeleted(ctx, v, "k")
				case "list-deleted 0", "list-deleted 1":
					var ds []key.Deleted
					ds, _, err = e.svc.ListDeleted(ctx, v, "", 10)
					want(t, fmt.Sprint(len(ds)) == s.op[len(s.op)-1:], "step %d: %d deleted keys listed", i, len(ds))
				case "recover":
					_, err = e.svc.Recover(ctx, v, "k")
				case "purge":
					err = e.svc.Purge(ctx, v, "k")
				case "purge-due 0", "purge-due 1":
					var n int
					n, err = e.svc.PurgeDue(ctx, v)
					want(t, fmt.Sprint(n) == s.op[len(s.op)-1:], "step %d: purged %d", i, n)
				case "wait":
					e.clock.add(v.Retention())
				}
				if t.Failed() {
					t.Fatalf("step %d (%s)", i, s.op)
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

// A key whose lifetime a certificate manages is changed through the
// certificate only.
func TestManaged(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := demo()
	m, _ := keyops.Generate(keyops.EC, 0, "")
	nv, err := key.NewVersion(m, key.Attrs{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.Collection().Create(ctx, v.Name, "cert", func(*object.Version[key.Data]) (object.Version[key.Data], error) { return nv, nil }); err != nil {
		t.Fatal(err)
	}
	managed := forbidden("KeyManagedByKeyVault", "certificate cert instead")
	for op, call := range map[string]func() error{
		"create": func() error { _, err := e.svc.Create(ctx, v, "cert", key.CreateParams{Kty: "EC"}); return err },
		"import": func() error { _, err := e.svc.Import(ctx, v, "cert", m.PrivateJWK(), key.Attrs{}); return err },
		"rotate": func() error { _, err := e.svc.Rotate(ctx, v, "cert"); return err },
		"update": func() error { _, err := e.svc.Update(ctx, v, "cert", "", key.Attrs{Enabled: ptr(false)}); return err },
		"delete": func() error { _, err := e.svc.Delete(ctx, v, "cert"); return err },
		"backup": func() error { _, err := e.svc.Backup(ctx, v, "cert"); return err },
	} {
		t.Run(op, func(t *testing.T) { checkErr(t, call(), managed) })
	}
	if k, err := e.svc.Get(ctx, v, "cert", ""); err != nil || !k.Managed {
		t.Fatalf("%+v %v", k, err)
	}
}

func TestBackupRestore(t *testing.T) {
	ctx := context.Background()
	prepare := func(t *testing.T) (*env, key.Key, []byte) {
		e := newEnv(t)
		if _, err := e.svc.Create(ctx, demo(), "k", key.CreateParams{Kty: "EC"}); err != nil {
			t.Fatal(err)
		}
		k, err := e.svc.Rotate(ctx, demo(), "k")
		if err != nil {
			t.Fatal(err)
		}
		blob, err := e.svc.Backup(ctx, demo(), "k")
		if err != nil {
			t.Fatal(err)
		}
		return e, k, blob
	}
	gone := func(t *testing.T, e *env) {
		if _, err := e.svc.Delete(ctx, demo(), "k"); err != nil {
			t.Fatal(err)
		}
		if err := e.svc.Purge(ctx, demo(), "k"); err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range map[string]struct {
		before func(t *testing.T, e *env)
		into   func() *vault.Vault
		blob   func(t *testing.T, e *env, b []byte) []byte
		want   *failure
	}{
		"after a purge":      {before: gone},
		"into another vault": {into: func() *vault.Vault { v := demo(); v.Name = "other"; return v }},
		"while it exists":    {want: &failure{kind: object.ErrExists, msg: "Key k already exists"}},
		"into another tenant": {before: gone, into: func() *vault.Vault { v := demo(); v.TenantID = "tenant-2"; return v },
			want: invalid("belongs to tenant tenant-1")},
		"a corrupt blob": {before: gone, blob: func(_ *testing.T, _ *env, b []byte) []byte { b[len(b)-1] ^= 1; return b }, want: invalid("could not be opened")},
		"a secret backup's purpose": {before: gone, blob: func(t *testing.T, e *env, b []byte) []byte {
			plain, err := e.b.Unseal("backup/keys/v1", b)
			if err != nil {
				t.Fatal(err)
			}
			return e.b.Seal("backup/secrets/v2", plain)
		}, want: invalid("could not be opened")},
	} {
		t.Run(name, func(t *testing.T) {
			e, k, blob := prepare(t)
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
			if got.Version != k.Version || !bytes.Equal(got.Public.X, k.Public.X) {
				t.Fatalf("restored %+v, want the current version %s", got, k.Version)
			}
			// The restored key still signs with its material.
			d := sha256.Sum256([]byte("x"))
			if _, _, err := e.svc.Operate(ctx, into, "k", "", key.Sign, "ES256", keyops.Params{Value: d[:]}, nil); err != nil {
				t.Fatal(err)
			}
			if vers, _, err := e.svc.ListVersions(ctx, into, "k", "", 10); err != nil || len(vers) != 2 {
				t.Fatalf("%d versions, %v", len(vers), err)
			}
		})
	}
	t.Run("no such key", func(t *testing.T) {
		_, err := newEnv(t).svc.Backup(ctx, demo(), "nope")
		checkErr(t, err, &failure{kind: object.ErrNotFound})
	})
}

func TestRandom(t *testing.T) {
	for count, ok := range map[int]bool{0: false, 1: true, 128: true, 129: false, -1: false} {
		b, err := key.Random(count)
		if ok != (err == nil) || (ok && len(b) != count) {
			t.Errorf("Random(%d) = %d bytes, %v", count, len(b), err)
		}
		if !ok && !errors.Is(err, object.ErrInvalid) {
			t.Errorf("Random(%d): %v, want ErrInvalid", count, err)
		}
	}
}

func TestList(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, n := range []string{"c", "A", "b"} {
		if _, err := e.svc.Create(ctx, demo(), n, key.CreateParams{Kty: "oct"}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for after := ""; ; {
		page, next, err := e.svc.List(ctx, demo(), after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range page {
			if hasPrivate(k.Public) {
				t.Fatal("a list carries key material")
			}
			names = append(names, k.Name)
		}
		if next == "" {
			break
		}
		after = next
	}
	if strings.Join(names, ",") != "A,b,c" {
		t.Fatalf("listed %v", names)
	}
}
