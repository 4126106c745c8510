package azerror

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWriteAndParse(t *testing.T) {
	for name, tc := range map[string]struct {
		code, inner, msg string
		want             string
	}{
		"plain":    {"SecretNotFound", "", "no such secret", `{"error":{"code":"SecretNotFound","message":"no such secret"}}`},
		"inner":    {"Forbidden", "AccessDenied", "denied", `{"error":{"code":"Forbidden","message":"denied","innererror":{"code":"AccessDenied","message":""}}}`},
		"html-ish": {"BadParameter", "", `<b>"x"</b>`, `{"error":{"code":"BadParameter","message":"\u003cb\u003e\"x\"\u003c/b\u003e"}}`},
	} {
		rec := httptest.NewRecorder()
		Write(rec, http.StatusTeapot, tc.code, tc.inner, tc.msg)
		if rec.Code != http.StatusTeapot || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
			t.Errorf("%s: status %d, content type %q", name, rec.Code, rec.Header().Get("Content-Type"))
		}
		if got := rec.Body.String(); got != tc.want {
			t.Errorf("%s: body %s, want %s", name, got, tc.want)
		}
		b, ok := Parse(rec.Body.Bytes())
		if !ok || b.Error.Code != tc.code || b.Error.Message != tc.msg || b.Inner() != tc.inner {
			t.Errorf("%s: parsed %+v, %v", name, b, ok)
		}
	}
	for _, bad := range []string{"", "null", "{}", `{"error":{}}`, "<html>", `{"error":"x"}`} {
		if b, ok := Parse([]byte(bad)); ok {
			t.Errorf("Parse(%q) = %+v, want not an error body", bad, b)
		}
	}
}
