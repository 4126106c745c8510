#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests run: a real kube-apiserver and an
# etcd server (through controller-runtime's envtest), and the kubelet,
# kube-controller-manager and kube-scheduler of the e2e cluster and of
# `coffer dev --kubernetes`, and the kubectl that the latter hands its user.
#
# They are compiled from the Go module proxy in the separate tools module
# tools/kube (kubectl in its own module, tools/kube/kubectl), because no
# other download is reachable from CI or a developer machine, and because k8s.io/kubernetes must never enter the main module's
# dependency graph. The binaries are cached in
#   ${COFFER_KUBE_ASSETS:-<repo>/.cache/kube-assets/<kubernetes version>}
# and rebuilt only when one is missing or tools/kube has changed since it was
# built. The directory is printed on stdout, so callers can do
#   KUBEBUILDER_ASSETS="$(./scripts/kube-assets.sh)"
# Everything else goes to stderr.
set -euo pipefail
# Build with the patched toolchain go.mod names, whatever the environment says.
export GOTOOLCHAIN="$(awk '$1 == "toolchain" { print $2 }' "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/go.mod")"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/tools/kube"
GO="${GO:-go}"

die() {
	echo "kube-assets: $*" >&2
	exit 1
}

command -v "$GO" >/dev/null 2>&1 || die "no Go toolchain ('$GO') on PATH; install Go first"
[[ -f "$tools/go.mod" ]] || die "missing $tools/go.mod"

# The Kubernetes version is whatever tools/kube pins, so the cache directory
# can never disagree with what gets built.
version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$tools/go.mod")"
[[ -n "$version" ]] || die "tools/kube/go.mod does not require k8s.io/kubernetes"

dir="${COFFER_KUBE_ASSETS:-$root/.cache/kube-assets/$version}"
mkdir -p "$dir" || die "cannot create the assets directory $dir"
dir="$(cd "$dir" && pwd)"

# A binary built from an older tools/kube (another etcd, other patches with
# the same Kubernetes version) or with other flags must not be reused: each
# binary's stamp is a hash of what it was built from. The Go version is left
# out on purpose: a binary from an older toolchain still serves the tests,
# and a new toolchain would make it a cold build of many minutes.
inputs="$(cat "$tools/go.mod" "$tools/go.sum" "$tools/cmd/etcd/main.go" | sha256sum | cut -d' ' -f1)"
# kubectl's module is its own, so that adding it left the others' stamps as
# they were.
kubectl_inputs="$(cat "$tools/kubectl/go.mod" "$tools/kubectl/go.sum" | sha256sum | cut -d' ' -f1)"
stamp_of() { # stamp_of NAME [build args...]
	printf '%s\n' "$inputs" "$@" | sha256sum | cut -d' ' -f1
}

fresh() { # fresh NAME STAMP
	[[ -x "$dir/$1" && -f "$dir/$1.stamp" && "$(cat "$dir/$1.stamp")" == "$2" ]]
}

# Static, reproducible builds that do not depend on a C toolchain, on a
# go.work above the repository, or on git being able to stamp VCS data.
export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"

# Built in a temporary directory beside the cache and renamed into place, so
# an interrupted or failed build never leaves a partial binary behind that a
# later run would take as cached.
tmp=""
cleanup() { [[ -z "$tmp" ]] || rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

build() { # build NAME WHAT HOW PKG [extra go build args]; $module and $module_inputs say where
	local name="$1" what="$2" how="$3" pkg="$4"
	shift 4
	local stamp mod="${module:-$tools}"
	stamp="$(inputs="${module_inputs:-$inputs}" stamp_of "$name" "$pkg" "$@")"
	if fresh "$name" "$stamp"; then
		return 0
	fi
	[[ -n "$tmp" ]] || tmp="$(mktemp -d "$dir/.build.XXXXXX")"
	echo "kube-assets: building $what from the Go module proxy ($how)..." >&2
	local start=$SECONDS
	if ! (cd "$mod" && "$GO" build -o "$tmp/$name" "$@" "$pkg"); then
		die "building $name failed (see the errors above); the Go module proxy must be reachable and $mod/go.sum complete"
	fi
	echo "$stamp" >"$tmp/$name.stamp"
	mv -f "$tmp/$name" "$dir/$name"
	mv -f "$tmp/$name.stamp" "$dir/$name.stamp"
	echo "kube-assets: built $dir/$name in $((SECONDS - start))s" >&2
}

# The version variables make `kube-apiserver --version` and /version report
# the real release instead of a development placeholder.
minor="${version#v1.}"
minor="${minor%%.*}"
build kube-apiserver "kube-apiserver $version" "first time takes several minutes" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	-ldflags "-s -w \
		-X k8s.io/component-base/version.gitVersion=$version \
		-X k8s.io/component-base/version.gitMajor=1 \
		-X k8s.io/component-base/version.gitMinor=$minor \
		-X k8s.io/component-base/version.gitTreeState=clean"

etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$tools/go.mod")"
build etcd "etcd ${etcd_version:-server}" "first time takes a minute or two" ./cmd/etcd -ldflags "-s -w"

# The node and the rest of the control plane, for the e2e cluster
# (test/e2e). KUBE_ASSETS_NODE=0 skips them.
bins=(kube-apiserver etcd)
if [[ "${KUBE_ASSETS_NODE:-1}" != 0 ]]; then
	for cmd in kubelet kube-controller-manager kube-scheduler; do
		build "$cmd" "$cmd $version" "first time takes a few minutes" \
			"k8s.io/kubernetes/cmd/$cmd" \
			-ldflags "-s -w \
				-X k8s.io/component-base/version.gitVersion=$version \
				-X k8s.io/component-base/version.gitMajor=1 \
				-X k8s.io/component-base/version.gitMinor=$minor \
				-X k8s.io/component-base/version.gitTreeState=clean"
		bins+=("$cmd")
	done
	module="$tools/kubectl" module_inputs="$kubectl_inputs" build kubectl "kubectl $version" "first time takes a few minutes" \
		k8s.io/kubernetes/cmd/kubectl \
		-ldflags "-s -w \
			-X k8s.io/component-base/version.gitVersion=$version \
			-X k8s.io/component-base/version.gitMajor=1 \
			-X k8s.io/component-base/version.gitMinor=$minor \
			-X k8s.io/component-base/version.gitTreeState=clean"
	bins+=(kubectl)
fi

for bin in "${bins[@]}"; do
	[[ -x "$dir/$bin" ]] || die "$dir/$bin is missing after the build"
done
echo "kube-assets: ${bins[*]} ($version, etcd ${etcd_version:-server}) ready in $dir" >&2
echo "$dir"
