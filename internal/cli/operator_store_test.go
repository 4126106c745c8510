//go:build !node

package cli

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server"
)

func TestParseLocation(t *testing.T) {
	tls := server.EtcdOptions{CAFile: "ca.pem", Prefix: "/p/"}
	for loc, want := range map[string]server.StoreOptions{
		"bolt:/var/lib/coffer":                 {Storage: "bolt", DataDir: "/var/lib/coffer"},
		"etcd:https://a:2379":                  {Storage: "etcd", Etcd: server.EtcdOptions{Endpoints: []string{"https://a:2379"}, CAFile: "ca.pem", Prefix: "/p/"}},
		"etcd:https://a:2379, https://b:2379,": {Storage: "etcd", Etcd: server.EtcdOptions{Endpoints: []string{"https://a:2379", "https://b:2379"}, CAFile: "ca.pem", Prefix: "/p/"}},
		"etcd:unix:///run/etcd.sock":           {Storage: "etcd", Etcd: server.EtcdOptions{Endpoints: []string{"unix:///run/etcd.sock"}, CAFile: "ca.pem", Prefix: "/p/"}},
	} {
		got, err := parseLocation("--to", loc, tls)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseLocation(%q) = %+v, %v; want %+v", loc, got, err, want)
		}
	}
	for _, bad := range []string{"", "bolt", "bolt:", "/var/lib/coffer", "mysql:x"} {
		_, err := parseLocation("--to", bad, tls)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--to") {
			t.Errorf("parseLocation(%q) = %v, want a usage error naming --to", bad, err)
		}
	}
}

// The refusals that need no store answer as usage errors (exit 2).
func TestMigrateUsage(t *testing.T) {
	for _, args := range [][]string{
		{"operator", "migrate", "--to", "etcd:x"},
		{"operator", "migrate", "--from", "etcd:a", "--to", "etcd:b"},
		{"operator", "migrate", "--from", "bolt:/x", "--to", "bolt:/x/"},
		{"operator", "snapshot", "save"},
		{"operator", "snapshot", "restore", "--data-dir", "/x"},
	} {
		if code, out := runMain(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, out)
		}
	}
}
