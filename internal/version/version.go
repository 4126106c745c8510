// Package version is the one place Coffer's release version lives. Every
// component reports it: the CSI driver's GetPluginInfo, the provider's
// Version call, `coffer --version`. Builds set it with
//
//	go build -ldflags "-X github.com/cofferhq/coffer/internal/version.Version=v1.2.3"
//
// as `make build` does from git describe.
package version

// Version is the release, or "dev" for a build that did not set it.
var Version = "dev"

// CompatibleDriver is the upstream Secrets Store CSI driver release whose
// behaviour and flags Coffer's driver matches.
const CompatibleDriver = "v1.6.1"
