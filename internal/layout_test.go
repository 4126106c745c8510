// Package internal_test keeps the layout's one-way rules: code is grouped
// by the process that runs it, and a group may import only the groups
// below it. A package that breaks a rule fails here, naming the import.
package internal_test

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/cofferhq/coffer/"

// forbidden maps a group to the groups its code must never depend on,
// directly or through other packages. The groups with no entry (cli, the
// assembly of everything, and testing) may import any group.
var forbidden = map[string][]string{
	// The node side runs on every node with node credentials; server
	// code (and with it the store and its keys) must not be linked in.
	"internal/node":    {"internal/server", "internal/cli", "internal/webhook", "internal/sync"},
	"internal/webhook": {"internal/server", "internal/node", "internal/cli", "internal/sync"},
	"internal/server":  {"internal/node", "internal/cli", "internal/webhook", "internal/sync"},
	// The sync controller is a Deployment with cluster credentials for
	// Secrets and tokens; it calls providers as the CSI driver does, and
	// may use only the node side's provider client and push protocol
	// (see allowed), never the driver, the provider or the node agent.
	"internal/sync": {"internal/server", "internal/node", "internal/cli", "internal/webhook"},
	// Shared groups are leaves: they serve every process, so they may
	// not pull in any one process's code.
	"internal/crypto":   {"internal/server", "internal/node", "internal/cli", "internal/webhook", "internal/sync"},
	"internal/protocol": {"internal/server", "internal/node", "internal/cli", "internal/webhook", "internal/daemon", "internal/sync"},
	"internal/daemon":   {"internal/server", "internal/node", "internal/cli", "internal/webhook", "internal/sync"},
	"internal/version":  {"internal/"},
}

// allowed are the exceptions to forbidden: packages of a banned group
// that a group may depend on. They are held to their own group's rules,
// so what they pull in is checked too.
var allowed = map[string][]string{
	"internal/sync": {"internal/node/providerclient", "internal/node/push"},
}

// exempt reports whether group may depend on d although d is in a banned
// group.
func exempt(group, d string) bool {
	for _, a := range allowed[group] {
		if within(d, a) {
			return true
		}
	}
	return false
}

// pkg is what go list says of a package.
type pkg struct {
	path       string   // relative to the module
	imports    []string // direct, of its non-test files
	deps       []string // transitive, of its non-test files
	all        []string // every transitive dependency, by full path
	allImports []string // direct, by full path
}

func list(t *testing.T, patterns ...string) []pkg {
	t.Helper()
	args := append([]string{"list", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}|{{join .Deps \" \"}}"}, patterns...)
	cmd := exec.Command("go", args...)
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "|")
		if len(f) != 3 {
			t.Fatalf("go list line %q", sc.Text())
		}
		pkgs = append(pkgs, pkg{path: strings.TrimPrefix(f[0], module), imports: local(f[1]), deps: local(f[2]), all: strings.Fields(f[2]), allImports: strings.Fields(f[1])})
	}
	return pkgs
}

// local keeps the module's own packages of a space-separated list,
// relative to the module (the standard library has internal/ packages too).
func local(s string) []string {
	var out []string
	for _, p := range strings.Fields(s) {
		if rel, ok := strings.CutPrefix(p, module); ok {
			out = append(out, rel)
		}
	}
	return out
}

func within(path, group string) bool {
	return path == group || strings.HasPrefix(path, strings.TrimSuffix(group, "/")+"/")
}

// testOnly reports whether a package exists for tests alone: the testing
// group, the test tree, and suites named *test (physicaltest).
func testOnly(path string) bool {
	last := path[strings.LastIndexByte(path, '/')+1:]
	return within(path, "internal/testing") || within(path, "test") || strings.HasSuffix(last, "test")
}

func TestLayoutRules(t *testing.T) {
	pkgs := list(t, "./...")
	if len(pkgs) < 40 {
		t.Fatalf("go list found %d packages; the test is not looking at the module", len(pkgs))
	}
	for _, p := range pkgs {
		for group, banned := range forbidden {
			if !within(p.path, group) {
				continue
			}
			for _, d := range p.deps {
				for _, b := range banned {
					if within(d, b) && !exempt(group, d) {
						t.Errorf("%s (group %s) depends on %s: %s must not use %s; move the shared code to internal/crypto, internal/protocol or internal/daemon", p.path, group, d, group, b)
					}
				}
			}
		}
		if testOnly(p.path) {
			continue
		}
		for _, d := range p.imports {
			if testOnly(d) {
				t.Errorf("%s imports the test-only package %s from non-test code", p.path, d)
			}
		}
	}
}

// helmUser is the one production package that may use Helm's library:
// `coffer install` installs the chart through it (so that the release is
// Helm's own, and `helm` can read and upgrade it). The node components,
// the server and the webhook are in the same binary but never call it.
const helmUser = "internal/cli/install"

// TestShippedBinaryDeps checks what the coffer binary links: no test-only
// package, and Helm only through coffer install.
func TestShippedBinaryDeps(t *testing.T) {
	bin := list(t, "./cmd/coffer")
	if len(bin) != 1 || len(bin[0].deps) == 0 {
		t.Fatalf("go list ./cmd/coffer: %+v", bin)
	}
	for _, d := range bin[0].deps {
		if testOnly(d) {
			t.Errorf("the coffer binary links the test-only package %s", d)
		}
	}
	helm := false
	for _, d := range bin[0].all {
		helm = helm || strings.HasPrefix(d, "helm.sh/")
	}
	if !helm {
		t.Errorf("the coffer binary does not link Helm, which coffer install needs")
	}
	for _, p := range list(t, "./...") {
		if testOnly(p.path) || p.path == helmUser {
			continue
		}
		for _, imp := range p.allImports {
			if strings.HasPrefix(imp, "helm.sh/") {
				t.Errorf("%s imports %s: only %s may use Helm's library", p.path, imp, helmUser)
			}
		}
	}
}

// nodeBanned are what the node build (`-tags node`, which the node image
// runs) must not link: the server and its store, the management CLI and
// the installer, the other processes, and the libraries only they use.
// Each would add its packages' pages and initializers to every node's
// DaemonSets.
var nodeBanned = []string{
	module + "internal/server", module + "internal/cli/", module + "internal/webhook", module + "internal/sync/controller",
	"helm.sh/", "github.com/Azure/azure-sdk-for-go/", "github.com/AzureAD/", "go.etcd.io/",
}

// TestNodeBuildDeps checks what the node build links.
func TestNodeBuildDeps(t *testing.T) {
	bin := list(t, "-tags", "node", "./cmd/coffer")
	if len(bin) != 1 || len(bin[0].deps) == 0 {
		t.Fatalf("go list -tags node ./cmd/coffer: %+v", bin)
	}
	for _, d := range bin[0].all {
		if bannedBy(d, nodeBanned) {
			t.Errorf("the node build links %s: move what needs it behind //go:build !node in internal/cli", d)
		}
		// The umbrella clientset and informer factory link every API
		// group's client; the node code uses the typed clients it needs.
		if d == "k8s.io/client-go/kubernetes" || d == "k8s.io/client-go/informers" {
			t.Errorf("the node build links %s: use the typed client of the group instead", d)
		}
	}
	for _, want := range []string{"internal/node/csidriver", "internal/node/provider", "internal/node/nodeagent"} {
		if !slices.Contains(bin[0].deps, want) {
			t.Errorf("the node build does not link %s", want)
		}
	}
}

// TestProviderBuildDeps checks what the provider build links: what the
// node build may not, nor the driver, the node agent or any of client-go
// and the Kubernetes API machinery, none of which the provider uses.
func TestProviderBuildDeps(t *testing.T) {
	bin := list(t, "-tags", "node,provider", "./cmd/coffer")
	if len(bin) != 1 || len(bin[0].deps) == 0 {
		t.Fatalf("go list -tags node,provider ./cmd/coffer: %+v", bin)
	}
	banned := append(slices.Clone(nodeBanned), module+"internal/node/csidriver", module+"internal/node/nodeagent", "k8s.io/client-go/", "k8s.io/apimachinery/")
	for _, d := range bin[0].all {
		if bannedBy(d, banned) {
			t.Errorf("the provider build links %s: move what needs it behind //go:build !(node && provider) in internal/cli", d)
		}
	}
	if !slices.Contains(bin[0].deps, "internal/node/provider") {
		t.Errorf("the provider build does not link internal/node/provider")
	}
}

// bannedBy reports whether package d is one of banned: an entry ending in
// / bans what is below it; any other, the package and what is below it.
func bannedBy(d string, banned []string) bool {
	for _, b := range banned {
		if strings.HasSuffix(b, "/") && strings.HasPrefix(d, b) || d == b || strings.HasPrefix(d, b+"/") {
			return true
		}
	}
	return false
}
