package federation

import (
	"errors"
	"strings"
	"testing"
)

func parse(t *testing.T, v string) *Matcher {
	t.Helper()
	m, err := ParseExpression(Expression{Value: v, LanguageVersion: 1})
	if err != nil {
		t.Fatalf("ParseExpression(%q) = %v", v, err)
	}
	return m
}

func TestExpressionMatches(t *testing.T) {
	const teamA = "claims['sub'] matches 'system:serviceaccount:team-a:*'"
	cases := []struct {
		expr   string
		claims map[string]any
		want   bool
	}{
		// A namespace-wide credential: every service account of team-a.
		{teamA, map[string]any{"sub": "system:serviceaccount:team-a:app"}, true},
		{teamA, map[string]any{"sub": "system:serviceaccount:team-a:x-y.z"}, true},
		// '*' matches the empty segment too; the apiserver never issues one.
		{teamA, map[string]any{"sub": "system:serviceaccount:team-a:"}, true},
		// '*' never reaches into another ':'-separated segment.
		{teamA, map[string]any{"sub": "system:serviceaccount:team-a:x:y"}, false},
		{teamA, map[string]any{"sub": "system:serviceaccount:team-ab:app"}, false},
		{teamA, map[string]any{"sub": "system:serviceaccount:team-b:app"}, false},
		{teamA, map[string]any{"sub": "xsystem:serviceaccount:team-a:app"}, false},
		{teamA, map[string]any{"sub": "System:serviceaccount:team-a:app"}, false}, // case-sensitive
		{teamA, map[string]any{}, false},
		{teamA, map[string]any{"sub": 42.0}, false},
		{teamA, map[string]any{"sub": []any{"system:serviceaccount:team-a:app"}}, false},
		// '*' inside a segment.
		{"claims['sub'] matches 'system:serviceaccount:team-*:app'", map[string]any{"sub": "system:serviceaccount:team-b:app"}, true},
		{"claims['sub'] matches 'system:serviceaccount:team-*:app'", map[string]any{"sub": "system:serviceaccount:team-b:c:app"}, false},
		// Any namespace, any account: the pattern spells both segments.
		{"claims['sub'] matches 'system:serviceaccount:*:*'", map[string]any{"sub": "system:serviceaccount:ns:sa"}, true},
		// '**' is how a pattern says it may cross separators.
		{"claims['sub'] matches 'system:serviceaccount:**'", map[string]any{"sub": "system:serviceaccount:ns:sa"}, true},
		{"claims['sub'] matches 'repo:contoso/app:**'", map[string]any{"sub": "repo:contoso/app:ref:refs/heads/main"}, true},
		{"claims['sub'] matches 'repo:contoso/app:*'", map[string]any{"sub": "repo:contoso/app:ref:refs/heads/main"}, false},
		{"claims['sub'] matches 'repo:contoso/app:ref:refs/heads/*'", map[string]any{"sub": "repo:contoso/app:ref:refs/heads/feature/x"}, true},
		// '?' is one character that is not ':'.
		{"claims['sub'] matches 'system:serviceaccount:ns:app-?'", map[string]any{"sub": "system:serviceaccount:ns:app-1"}, true},
		{"claims['sub'] matches 'system:serviceaccount:ns:app-?'", map[string]any{"sub": "system:serviceaccount:ns:app-12"}, false},
		{"claims['sub'] matches 'system:serviceaccount:ns?app'", map[string]any{"sub": "system:serviceaccount:ns:app"}, false},
		{"claims['sub'] matches 'a:?'", map[string]any{"sub": "a:é"}, true},
		// Regular-expression characters are literal.
		{"claims['sub'] matches 'a.b:*'", map[string]any{"sub": "axb:c"}, false},
		{"claims['sub'] matches 'a.b:(*)'", map[string]any{"sub": "a.b:(x)"}, true},
		// eq is exact, wildcards included.
		{"claims['sub'] eq 'system:serviceaccount:ns:*'", map[string]any{"sub": "system:serviceaccount:ns:app"}, false},
		{"claims['sub'] eq 'system:serviceaccount:ns:*'", map[string]any{"sub": "system:serviceaccount:ns:*"}, true},
		// '' is a literal quote.
		{"claims['sub'] eq 'it''s'", map[string]any{"sub": "it's"}, true},
		// and: every term must hold.
		{"claims['sub'] matches 'repo:contoso/*:ref:refs/heads/main' and claims['job_workflow_ref'] eq 'contoso/wf/.github/workflows/deploy.yml@refs/heads/main'",
			map[string]any{"sub": "repo:contoso/app:ref:refs/heads/main", "job_workflow_ref": "contoso/wf/.github/workflows/deploy.yml@refs/heads/main"}, true},
		{"claims['sub'] matches 'repo:contoso/*:ref:refs/heads/main' and claims['job_workflow_ref'] eq 'contoso/wf/.github/workflows/deploy.yml@refs/heads/main'",
			map[string]any{"sub": "repo:contoso/app:ref:refs/heads/main", "job_workflow_ref": "contoso/wf/.github/workflows/other.yml@refs/heads/main"}, false},
		{"claims['sub'] matches 'repo:contoso/*:ref:refs/heads/main' and claims['job_workflow_ref'] eq 'x'",
			map[string]any{"sub": "repo:contoso/app:ref:refs/heads/main"}, false},
	}
	for _, c := range cases {
		if got := parse(t, c.expr).Match(c.claims); got != c.want {
			t.Errorf("%s on %v = %v, want %v", c.expr, c.claims, got, c.want)
		}
	}
}

func TestExpressionErrors(t *testing.T) {
	cases := []struct {
		expr string
		col  int
		want string
	}{
		{"", 1, "claims['<name>']"},
		{" claims['sub'] eq 'a'", 1, "claims['<name>']"},
		{"claims[\"sub\"] eq 'a'", 1, "claims['<name>']"},
		{"Claims['sub'] eq 'a'", 1, "claims['<name>']"},
		{"claims['sub'] eq 'a' ", 21, `" and "`},
		{"claims['sub']  eq 'a'", 15, `"matches" or "eq"`},
		{"claims['sub'] EQ 'a'", 15, `found "EQ"`},
		{"claims['sub'] like 'a'", 15, `found "like"`},
		{"claims['sub'] matches  'a'", 23, "single quotes"},
		{"claims['sub'] eq \"a\"", 18, "single quotes"},
		{"claims['sub']eq 'a'", 14, "one space"},
		{"claims['s b'] eq 'a'", 10, "claim names"},
		{"claims[''] eq 'a'", 9, "empty"},
		{"claims['sub", 8, "not closed"},
		{"claims['sub' eq 'a'", 12, "']"},
		{"claims['sub'] eq 'abc", 18, "no closing quote"},
		{"claims['sub'] eq ''", 18, "empty"},
		{"claims['sub'] eq 'a' AND claims['x'] eq 'b'", 21, `" and "`},
		{"claims['sub'] eq 'a' and  claims['x'] eq 'b'", 26, "claims['<name>']"},
		{"claims['sub'] eq 'a' or claims['sub'] eq 'b'", 21, `" and "`},
		{"claims['sub'] eq 'a'b'", 21, `" and "`},
		{"claims['sub'] matches 'a:***'", 26, "'***'"},
		{"claims['sub'] matches 'it''s:***'", 30, "'***'"},
		{"claims['sub'] eq 'a\tb'", 20, "control character"},
		{"claims['job_workflow_ref'] matches 'x/*'", 1, "claims['sub']"},
		{"claims['sub'] éq 'a'", 15, "operator"},
		{strings.Repeat("claims['sub'] eq 'a' and ", 8) + "claims['sub'] eq 'a'", 201, "at most 8"},
		{"claims['sub'] eq '" + strings.Repeat("a", 601) + "'", 18, "over 600"},
		{"claims['" + strings.Repeat("a", 65) + "'] eq 'a'", 9, "over 64"},
	}
	for _, c := range cases {
		_, err := ParseExpression(Expression{Value: c.expr, LanguageVersion: 1})
		var ee *ExpressionError
		if !errors.As(err, &ee) {
			t.Errorf("%q: error %v, want an ExpressionError", c.expr, err)
			continue
		}
		if ee.Column != c.col || !strings.Contains(ee.Error(), c.want) || !strings.Contains(ee.Error(), "column") {
			t.Errorf("%q: %v (column %d), want column %d and %q", c.expr, err, ee.Column, c.col, c.want)
		}
	}
	// Not positional: the version, and the length before anything is read.
	for _, e := range []Expression{
		{Value: "claims['sub'] eq 'a'", LanguageVersion: 2},
		{Value: "claims['sub'] eq 'a'"},
		{Value: "claims['sub'] eq '" + strings.Repeat("a", MaxExpressionBytes) + "'", LanguageVersion: 1},
	} {
		if _, err := ParseExpression(e); err == nil {
			t.Errorf("%.40q version %d accepted", e.Value, e.LanguageVersion)
		}
	}
}

func TestSubjectIndex(t *testing.T) {
	cases := map[string]string{
		"claims['sub'] matches 'system:serviceaccount:team-a:*'":                              "system:serviceaccount:team-a:",
		"claims['sub'] matches 'system:serviceaccount:team-*:app'":                            "system:serviceaccount:",
		"claims['sub'] matches 'system:serviceaccount:ns:app-?'":                              "system:serviceaccount:ns:",
		"claims['sub'] eq 'system:serviceaccount:ns:app'":                                     "system:serviceaccount:ns:",
		"claims['sub'] matches '**'":                                                          "",
		"claims['sub'] matches 'repo*'":                                                       "",
		"claims['x'] eq 'a:b:c' and claims['sub'] matches 'a:*' and claims['sub'] eq 'a:b:c'": "a:b:",
		"claims['sub'] eq '" + strings.Repeat("a:", 20) + "'":                                 strings.Repeat("a:", 16),
	}
	for expr, want := range cases {
		m := parse(t, expr)
		if got := m.SubjectPrefix(); got != want {
			t.Errorf("%s: prefix %q, want %q", expr, got, want)
		}
	}
	// The prefix of every expression that admits a subject is among the
	// subject's lookup keys, however many separators it has.
	for _, sub := range []string{"system:serviceaccount:team-a:app", strings.Repeat("a:", 20), "plain"} {
		for expr := range cases {
			m := parse(t, expr)
			if !m.Match(map[string]any{"sub": sub, "x": "a:b:c"}) {
				continue
			}
			found := false
			for _, p := range SubjectPrefixes(sub) {
				found = found || p == m.SubjectPrefix()
			}
			if !found {
				t.Errorf("%s admits %q but its prefix %q is not among %q", expr, sub, m.SubjectPrefix(), SubjectPrefixes(sub))
			}
		}
	}
	if n := len(SubjectPrefixes(strings.Repeat(":", 1000))); n != maxIndexSeparators+1 {
		t.Errorf("a subject of 1000 separators costs %d lookups, want %d", n, maxIndexSeparators+1)
	}
}
