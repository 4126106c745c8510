package federation

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/egress"
	"github.com/cofferhq/coffer/internal/testing/oidctest"
)

const sub = "system:serviceaccount:default:workload"

func setup(t *testing.T) (*oidctest.Issuer, *Verifier, List) {
	iss := oidctest.New(t)
	v := New(Config{Egress: egress.Policy{AllowPrivate: true}, Client: iss.Client()})
	creds := List{{Name: "k8s", Issuer: iss.URL, Subject: sub, Audiences: []string{DefaultAudience}}}
	return iss, v, creds
}

func TestAccepts(t *testing.T) {
	iss, v, creds := setup(t)
	got, c, err := v.Verify(context.Background(), iss.Token(t, sub, []string{DefaultAudience}, time.Time{}, time.Time{}), creds)
	if err != nil || got.Name != "k8s" || c.Subject != sub {
		t.Fatalf("Verify = %+v %+v %v", got, c, err)
	}
	// A second assertion is served from the cached key set.
	v.Verify(context.Background(), iss.Token(t, sub, []string{DefaultAudience}, time.Time{}, time.Time{}), creds)
	if hits := iss.JWKSHits.Load(); hits != 1 {
		t.Fatalf("JWKS fetched %d times, want 1 (cached)", hits)
	}
}

func TestRejections(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	aud := []string{DefaultAudience}
	cases := map[string]struct {
		token func(*oidctest.Issuer) string
		want  []string
	}{
		"wrong issuer": {func(i *oidctest.Issuer) string {
			return i.TokenAs(t, "https://elsewhere.example", sub, aud, now, time.Time{})
		},
			[]string{"issuer", `"https://elsewhere.example"`}},
		"issuer with trailing slash": {func(i *oidctest.Issuer) string { return i.TokenAs(t, i.URL+"/", sub, aud, now, time.Time{}) },
			[]string{"issuer", "/\""}},
		"wrong subject": {func(i *oidctest.Issuer) string {
			return i.Token(t, "system:serviceaccount:default:other", aud, now, time.Time{})
		},
			[]string{"subject", `"system:serviceaccount:default:other"`, "issuer"}},
		"wrong audience": {func(i *oidctest.Issuer) string { return i.Token(t, sub, []string{"api://other"}, now, time.Time{}) },
			[]string{"audience", "api://other", DefaultAudience}},
		"expired": {func(i *oidctest.Issuer) string {
			return i.Token(t, sub, aud, now.Add(-2*time.Hour), now.Add(-time.Hour))
		},
			[]string{"expired"}},
		"not yet valid": {func(i *oidctest.Issuer) string { return i.Token(t, sub, aud, now.Add(time.Hour), now.Add(2*time.Hour)) },
			[]string{"not valid before"}},
		"lifetime too long": {func(i *oidctest.Issuer) string { return i.Token(t, sub, aud, now, now.Add(48*time.Hour)) },
			[]string{"lifetime", "limit"}},
		"unknown kid": {func(i *oidctest.Issuer) string {
			i.SignWithUnpublishedKey(t)
			return i.Token(t, sub, aud, now, time.Time{})
		},
			[]string{`"unpublished"`, "does not contain"}},
		"jwks unreachable": {func(i *oidctest.Issuer) string { i.SetJWKS("down"); return i.Token(t, sub, aud, now, time.Time{}) },
			[]string{"HTTP 503"}},
		"jwks oversized": {func(i *oidctest.Issuer) string { i.SetJWKS("huge"); return i.Token(t, sub, aud, now, time.Time{}) },
			[]string{"more than"}},
		"not a jwt": {func(*oidctest.Issuer) string { return "abc.def" }, []string{"not a signed JWT"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			iss, v, creds := setup(t)
			raw := c.token(iss)
			_, _, err := v.Verify(ctx, raw, creds)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if len(raw) > 20 && strings.Contains(err.Error(), raw[len(raw)-20:]) {
				t.Error("error echoes the assertion")
			}
		})
	}
}

func TestUnknownKidRefreshesOnce(t *testing.T) {
	iss, _, creds := setup(t)
	now := time.Now()
	v := New(Config{Egress: egress.Policy{AllowPrivate: true}, Client: iss.Client(), Now: func() time.Time { return now }})
	ctx := context.Background()
	aud := []string{DefaultAudience}
	if _, _, err := v.Verify(ctx, iss.Token(t, sub, aud, time.Time{}, time.Time{}), creds); err != nil {
		t.Fatal(err)
	}
	// The issuer rotates its key: once the refetch spacing has passed, the
	// new kid triggers one refetch.
	iss.Rotate(t)
	now = now.Add(31 * time.Second)
	if _, _, err := v.Verify(ctx, iss.Token(t, sub, aud, time.Time{}, time.Time{}), creds); err != nil {
		t.Fatalf("rotated key not picked up: %v", err)
	}
	if hits := iss.JWKSHits.Load(); hits != 2 {
		t.Fatalf("JWKS fetched %d times, want 2", hits)
	}
	// Unknown kids do not hammer the issuer: refetches are spaced out.
	iss.SignWithUnpublishedKey(t)
	for range 5 {
		v.Verify(ctx, iss.Token(t, sub, aud, time.Time{}, time.Time{}), creds)
	}
	if hits := iss.JWKSHits.Load(); hits != 2 {
		t.Fatalf("JWKS fetched %d times after unknown kids, want 2 (rate-limited)", hits)
	}
}

func TestExpressionCredential(t *testing.T) {
	iss, v, _ := setup(t)
	aud := []string{DefaultAudience}
	creds := List{
		{Name: "exact", Issuer: iss.URL, Subject: "system:serviceaccount:team-b:app", Audiences: aud},
		{Name: "team-a", Issuer: iss.URL, ClaimsMatchingExpression: &Expression{Value: "claims['sub'] matches 'system:serviceaccount:team-a:*'", LanguageVersion: 1}, Audiences: aud},
	}
	ctx := context.Background()
	for _, sub := range []string{"system:serviceaccount:team-a:app", "system:serviceaccount:team-a:other"} {
		got, _, err := v.Verify(ctx, iss.Token(t, sub, aud, time.Time{}, time.Time{}), creds)
		if err != nil || got.Name != "team-a" {
			t.Fatalf("%s: Verify = %+v, %v", sub, got, err)
		}
	}
	if got, _, err := v.Verify(ctx, iss.Token(t, "system:serviceaccount:team-b:app", aud, time.Time{}, time.Time{}), creds); err != nil || got.Name != "exact" {
		t.Fatalf("exact subject: Verify = %+v, %v", got, err)
	}
	for _, sub := range []string{"system:serviceaccount:team-b:other", "system:serviceaccount:team-a:x:y", "system:serviceaccount:team-ab:app"} {
		_, _, err := v.Verify(ctx, iss.Token(t, sub, aud, time.Time{}, time.Time{}), creds)
		// The caller is told its subject; only the log is told what the
		// identity trusts.
		var fe *Error
		if !errors.As(err, &fe) || fe.AADSTS != 70021 || !strings.Contains(err.Error(), sub) {
			t.Errorf("%s: %v", sub, err)
		} else if strings.Contains(err.Error(), "team-a:*") || strings.Contains(err.Error(), "team-b:app") {
			t.Errorf("%s: the refusal tells the caller what the identity trusts: %v", sub, err)
		} else if !strings.Contains(fe.Detail, "system:serviceaccount:team-a:*") || !strings.Contains(fe.Detail, `"system:serviceaccount:team-b:app"`) {
			t.Errorf("%s: the log detail does not name the configured subject and expression: %q", sub, fe.Detail)
		}
	}
	// A matched expression still checks the audience.
	_, _, err := v.Verify(ctx, iss.Token(t, "system:serviceaccount:team-a:app", []string{"api://other"}, time.Time{}, time.Time{}), creds)
	if err == nil || !strings.Contains(err.Error(), "AADSTS700212") {
		t.Errorf("wrong audience: %v", err)
	}
}
