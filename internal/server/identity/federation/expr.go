package federation

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// LanguageVersion is the version of Entra's flexible federated identity
// credential language that Coffer implements, the only one Entra defines.
const LanguageVersion = 1

// Expression is a claims-matching expression as Entra ID and ARM carry it
// in a federated credential's claimsMatchingExpression.
type Expression struct {
	Value           string `json:"value"`
	LanguageVersion int    `json:"languageVersion"`
}

// Limits on an expression. They bound the work one token costs: a claim is
// at most a 16 KiB assertion, and each term is matched in linear time.
const (
	MaxExpressionBytes = 1000
	maxTerms           = 8
	maxComparand       = 600
	maxClaimName       = 64
	// maxIndexSeparators bounds how many ':'-separated segments of a
	// subject key the credential index, so a token costs at most that many
	// index lookups however many separators its subject has.
	maxIndexSeparators = 16
)

// Separator is the character that '*' and '?' never match: Kubernetes
// (system:serviceaccount:{namespace}:{name}) and GitHub
// (repo:{owner}/{repo}:ref:{ref}) subjects are ':'-separated paths, and a
// wildcard for one segment must not reach into the next.
const Separator = ':'

// ExpressionError is an expression the parser refused, with where.
type ExpressionError struct {
	// Column is the 1-based position, in characters, of the problem.
	Column  int
	Message string
}

func (e *ExpressionError) Error() string {
	return fmt.Sprintf("claimsMatchingExpression is invalid at column %d: %s", e.Column, e.Message)
}

type op int

const (
	opEq op = iota
	opMatches
)

type term struct {
	claim string
	op    op
	value string
	re    *regexp.Regexp // for opMatches
}

// Matcher is a parsed claims-matching expression.
type Matcher struct {
	terms  []term
	prefix string
}

// ParseExpression parses and checks an expression in language version 1:
//
//	expression = term *( " and " term )
//	term       = "claims['" name "'] " ( "matches" / "eq" ) " '" comparand "'"
//	name       = 1*64 ( letter / digit / "_" / "-" / "." )
//	comparand  = 1*600 ( any character but "'" / "''" )   ; '' is one '
//
// Tokens are separated by exactly one space, keywords are lower case, and
// nothing may precede or follow the expression. In a "matches" comparand,
// '*' matches any run of characters (possibly none) without a ':', '?'
// exactly one character that is not ':', and '**' any run of characters,
// ':' included; '***' is refused as ambiguous. In an "eq" comparand every
// character is literal. At least one term must test claims['sub'], so
// that every credential constrains the subject.
func ParseExpression(e Expression) (*Matcher, error) {
	if e.LanguageVersion != LanguageVersion {
		return nil, fmt.Errorf("claimsMatchingExpression languageVersion %d is not supported: use %d", e.LanguageVersion, LanguageVersion)
	}
	if len(e.Value) > MaxExpressionBytes {
		return nil, fmt.Errorf("claimsMatchingExpression is %d bytes, over the %d-byte limit", len(e.Value), MaxExpressionBytes)
	}
	if !utf8.ValidString(e.Value) {
		col := utf8.RuneCountInString(e.Value[:firstInvalid(e.Value)]) + 1
		return nil, &ExpressionError{Column: col, Message: "the expression is not valid UTF-8"}
	}
	p := parser{in: []rune(e.Value)}
	m := &Matcher{}
	for {
		t, err := p.term()
		if err != nil {
			return nil, err
		}
		m.terms = append(m.terms, t)
		if p.done() {
			break
		}
		if !p.lit(" and ") {
			return nil, p.errorf(`expected " and " or the end of the expression, found %s`, p.found())
		}
		if len(m.terms) == maxTerms {
			return nil, p.errorf("an expression has at most %d terms", maxTerms)
		}
	}
	subject := false
	for _, t := range m.terms {
		if t.claim != "sub" {
			continue
		}
		subject = true
		if pre := indexPrefix(t); len(pre) > len(m.prefix) {
			m.prefix = pre
		}
	}
	if !subject {
		return nil, &ExpressionError{Column: 1, Message: "the expression must test claims['sub'], such as claims['sub'] matches 'system:serviceaccount:{namespace}:*': every credential constrains the subject"}
	}
	return m, nil
}

func firstInvalid(s string) int {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return i
			}
		}
	}
	return len(s)
}

type parser struct {
	in  []rune
	pos int
}

func (p *parser) done() bool { return p.pos == len(p.in) }

func (p *parser) errorf(format string, args ...any) *ExpressionError {
	return p.errorAt(p.pos, format, args...)
}

func (p *parser) errorAt(pos int, format string, args ...any) *ExpressionError {
	return &ExpressionError{Column: pos + 1, Message: fmt.Sprintf(format, args...)}
}

// found quotes the next few characters, for an error message.
func (p *parser) found() string {
	if p.done() {
		return "the end of the expression"
	}
	rest := p.in[p.pos:]
	if len(rest) > 12 {
		return fmt.Sprintf("%q...", string(rest[:12]))
	}
	return fmt.Sprintf("%q", string(rest))
}

// lit consumes s if the input continues with it.
func (p *parser) lit(s string) bool {
	r := []rune(s)
	if len(p.in)-p.pos < len(r) || string(p.in[p.pos:p.pos+len(r)]) != s {
		return false
	}
	p.pos += len(r)
	return true
}

func claimNameChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.'
}

func (p *parser) term() (term, error) {
	var t term
	if !p.lit("claims['") {
		return t, p.errorf("expected a claim lookup claims['<name>'], found %s", p.found())
	}
	start := p.pos
	for !p.done() && p.in[p.pos] != '\'' {
		if !claimNameChar(p.in[p.pos]) {
			return t, p.errorf("claim names use letters, digits, '_', '-' and '.', found %q", p.in[p.pos])
		}
		p.pos++
	}
	switch {
	case p.done():
		return t, p.errorAt(start-1, "the claim name that starts here is not closed with ']")
	case p.pos == start:
		return t, p.errorf("the claim name is empty")
	case p.pos-start > maxClaimName:
		return t, p.errorAt(start, "the claim name is over %d characters", maxClaimName)
	}
	t.claim = string(p.in[start:p.pos])
	if !p.lit("']") {
		return t, p.errorf("expected '] after the claim name, found %s", p.found())
	}
	if !p.lit(" ") {
		return t, p.errorf("expected one space and an operator after the claim lookup, found %s", p.found())
	}
	switch {
	case p.lit("matches "):
		t.op = opMatches
	case p.lit("eq "):
		t.op = opEq
	default:
		end := p.pos
		for end < len(p.in) && p.in[end] != ' ' {
			end++
		}
		return t, p.errorf(`expected the operator "matches" or "eq" followed by one space, found %q`, string(p.in[p.pos:end]))
	}
	quote := p.pos
	if !p.lit("'") {
		return t, p.errorf("expected a comparand in single quotes, found %s", p.found())
	}
	var b strings.Builder
	n := 0
	for {
		if p.done() {
			return t, p.errorAt(quote, "the comparand that starts here has no closing quote")
		}
		r := p.in[p.pos]
		p.pos++
		if r == '\'' {
			if !p.done() && p.in[p.pos] == '\'' {
				p.pos++ // '' is a literal quote
			} else {
				break
			}
		}
		if r < 0x20 || r == 0x7f {
			return t, p.errorAt(p.pos-1, "the comparand contains control character %U", r)
		}
		b.WriteRune(r)
		n++
	}
	t.value = b.String()
	switch {
	case n == 0:
		return t, p.errorAt(quote, "the comparand is empty")
	case n > maxComparand:
		return t, p.errorAt(quote, "the comparand is over %d characters", maxComparand)
	}
	if t.op == opMatches {
		re, col, err := compileGlob(t.value)
		if err != nil {
			// col counts characters of the unescaped value; map it back
			// to the expression through the escapes before it.
			return t, p.errorAt(quote+1+escapedOffset(p.in[quote+1:], col), "%s", err)
		}
		t.re = re
	}
	return t, nil
}

// escapedOffset returns how many input characters hold the first n
// characters of an unescaped comparand.
func escapedOffset(in []rune, n int) int {
	i := 0
	for ; n > 0 && i < len(in); n-- {
		if in[i] == '\'' {
			i++
		}
		i++
	}
	return i
}

// compileGlob turns a "matches" comparand into an anchored regular
// expression. Go's regexp runs in time linear in the input, so no pattern
// can make matching a token slow.
func compileGlob(pattern string) (*regexp.Regexp, int, error) {
	var b strings.Builder
	b.WriteString(`\A(?s:`)
	rs := []rune(pattern)
	for i := 0; i < len(rs); {
		switch {
		case rs[i] == '*' && i+2 < len(rs) && rs[i+1] == '*' && rs[i+2] == '*':
			return nil, i, fmt.Errorf("'***' is ambiguous: use '*' for one ':'-separated segment or '**' across separators")
		case rs[i] == '*' && i+1 < len(rs) && rs[i+1] == '*':
			b.WriteString(`.*`)
			i += 2
		case rs[i] == '*':
			b.WriteString(`[^:]*`)
			i++
		case rs[i] == '?':
			b.WriteString(`[^:]`)
			i++
		default:
			b.WriteString(regexp.QuoteMeta(string(rs[i])))
			i++
		}
	}
	b.WriteString(`)\z`)
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, 0, fmt.Errorf("the pattern does not compile: %v", err)
	}
	return re, 0, nil
}

// indexPrefix is the part of a subject term that every matching subject
// starts with, cut after a ':' (so it is one of SubjectPrefixes of any
// subject the term admits), and after at most maxIndexSeparators of them.
func indexPrefix(t term) string {
	lit := t.value
	if t.op == opMatches {
		if i := strings.IndexAny(lit, "*?"); i >= 0 {
			lit = lit[:i]
		}
	}
	return cutSegments(lit[:strings.LastIndexByte(lit, Separator)+1])
}

func cutSegments(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == Separator {
			if n++; n == maxIndexSeparators {
				return s[:i+1]
			}
		}
	}
	return s
}

// SubjectPrefix is the key under which a store indexes the credential: a
// ':'-terminated prefix (possibly empty) that every subject the expression
// admits starts with. A store finds the expressions that may admit a
// subject by looking up each of SubjectPrefixes(subject).
func (m *Matcher) SubjectPrefix() string { return m.prefix }

// SubjectPrefixes returns the keys to look expression credentials up by for
// subject: the empty string, and subject up to and including each of its
// first separators.
func SubjectPrefixes(subject string) []string {
	out := []string{""}
	for i := 0; i < len(subject) && len(out) <= maxIndexSeparators; i++ {
		if subject[i] == Separator {
			out = append(out, subject[:i+1])
		}
	}
	return out
}

// Match reports whether claims, an assertion's verified claims, satisfy
// every term. A claim that is absent or not a string satisfies none.
func (m *Matcher) Match(claims map[string]any) bool {
	for _, t := range m.terms {
		v, ok := claims[t.claim].(string)
		if !ok {
			return false
		}
		switch t.op {
		case opEq:
			if v != t.value {
				return false
			}
		case opMatches:
			if !t.re.MatchString(v) {
				return false
			}
		}
	}
	return true
}
