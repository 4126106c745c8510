package jsonenc

import (
	"encoding/json"
	"testing"
)

// TestAppendStringIsJSON compares AppendString with encoding/json on the
// strings that escape differently: controls, quotes, HTML, the JavaScript
// line separators and invalid UTF-8; the fuzz target extends it.
func TestAppendStringIsJSON(t *testing.T) {
	for _, s := range []string{"", "plain", "\"q\\", "<a&b>", "\x00\x1f\n\r\t\b\f", "\u2028\u2029", "\xff\xfe", "héllo ✓", "a\xc3"} {
		checkString(t, s)
	}
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
