package jsonenc

import (
	"encoding/json"
	"testing"

	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// TestAppendStringIsJSON compares AppendString with encoding/json on the
// strings that escape differently: controls, quotes, HTML, the JavaScript
// line separators and invalid UTF-8; the fuzz target extends it.
func TestAppendStringIsJSON(t *testing.T) {
	for _, s := range []string{"", "plain", "\"q\\", "<a&b>", "\x00\x1f\n\r\t\b\f", "\u2028\u2029", "\xff\xfe", "héllo ✓", "a\xc3"} {
		checkString(t, s)
	}
}

// TestAppendStringEveryByteInAWord puts every byte value at every place
// of plain strings long enough for AppendString's eight-byte test, and
// one byte either side of a word's edge, so that a test that misses a
// byte, or flags a plain one, shows here and not only under fuzzing.
func TestAppendStringEveryByteInAWord(t *testing.T) {
	plain := "abcdefghijklmnopq"
	for n := 8; n <= len(plain); n++ {
		for at := range n {
			for c := range 256 {
				s := []byte(plain[:n])
				s[at] = byte(c)
				checkString(t, string(s))
			}
		}
	}
}

// TestSeedCorpus keeps FuzzAppendString's corpus: strings that reach
// AppendString in the secret read's response and in audit lines, as
// clients send them.
func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzAppendString", func(*testing.T) []fuzzseed.Seed {
		return []fuzzseed.Seed{
			// A PEM certificate bundle as az keyvault secret set --file stores it.
			fuzzseed.S("pem-value", "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2\n-----END CERTIFICATE-----\n"),
			// A connection string and a JSON document as values.
			fuzzseed.S("connection-string", "Server=tcp:db.coffer.example,1433;User ID=app;Password=p@ss<w>rd&1;"),
			fuzzseed.S("json-value", `{"user":"app","password":"\"quoted\"\t"}`),
			// Audit lines carry request paths and user agents.
			fuzzseed.S("user-agent", "azsdk-go-azsecrets/v1.5.1 (go1.27.3; linux)"),
			fuzzseed.S("path", "/secrets/db-password/0b8f7e523c6f4c599d3a8f6f1d1c2b3a"),
			// What json.Marshal escapes differently from a naive encoder.
			fuzzseed.S("js-separators", "secret\u2028<value>\xff"),
			fuzzseed.S("controls", "\x00\x01\x1f\x7f\b\f\n\r\t"),
			fuzzseed.S("truncated-utf8", "caf\xc3"),
			fuzzseed.S("non-ascii", "mot de passe: été ✓ 密码 🔑"),
		}
	})
}

func FuzzAppendString(f *testing.F) {
	f.Add("secret\u2028<value>\xff")
	f.Fuzz(checkString)
}

func checkString(t *testing.T, s string) {
	want, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if got := AppendString(nil, s); string(got) != string(want) {
		t.Errorf("AppendString(%q) = %s, encoding/json writes %s", s, got, want)
	}
}

// BenchmarkAppendString encodes what a secret read's response carries
// most: an ASCII identifier URL and a value with nothing to escape.
func BenchmarkAppendString(b *testing.B) {
	s := "https://demo.vault.coffer.localhost:8443/secrets/db-password/0b8f7e523c6f4c599d3a8f6f1d1c2b3a"
	buf := make([]byte, 0, 256)
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		buf = AppendString(buf[:0], s)
	}
}
