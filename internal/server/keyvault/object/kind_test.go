package object

import (
	"regexp"
	"strings"
	"testing"
)

// The hand-written validators must agree with Azure's rules as regexps.
func TestValidatorsMatchAzureRules(t *testing.T) {
	nameRE := regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)
	versionRE := regexp.MustCompile(`^[0-9a-fA-F]{32}$`)
	inputs := []string{"", "a", "A-1", "a_b", "a.b", "a/b", "é", strings.Repeat("a", 127), strings.Repeat("a", 128),
		"0123456789abcdef0123456789ABCDEF", "0123456789abcdef0123456789abcdeg", "0123456789abcdef0123456789abcde", " a"}
	for _, in := range inputs {
		if ValidName(in) != nameRE.MatchString(in) {
			t.Errorf("ValidName(%q) = %v", in, ValidName(in))
		}
		if ValidVersion(in) != versionRE.MatchString(in) {
			t.Errorf("ValidVersion(%q) = %v", in, ValidVersion(in))
		}
	}
}

func FuzzValidators(f *testing.F) {
	nameRE := regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)
	versionRE := regexp.MustCompile(`^[0-9a-fA-F]{32}$`)
	f.Add("abc")
	f.Add("0123456789abcdef0123456789abcdef")
	f.Fuzz(func(t *testing.T, s string) {
		if ValidName(s) != nameRE.MatchString(s) || ValidVersion(s) != versionRE.MatchString(s) {
			t.Fatalf("validators disagree with the regexps on %q", s)
		}
	})
}
