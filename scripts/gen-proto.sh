#!/usr/bin/env bash
# Regenerates the Go code of Coffer's protocol definitions (proto/) with buf
# and the protoc-gen-go and protoc-gen-go-grpc plugins, all built from the Go
# module proxy (no protoc binary is needed, and no other download is
# reachable from CI or a developer machine), and records the digests of the
# inputs and outputs in internal/node/push/generated.sum, which a fast test
# of that package checks.
#
#   scripts/gen-proto.sh          regenerate in place
#   scripts/gen-proto.sh --check  regenerate into a temporary directory and
#                                 fail if the committed files differ
#
# Versions: protoc-gen-go is the google.golang.org/protobuf that go.mod
# requires, so the generated code and the runtime it links against are one
# release; protoc-gen-go-grpc and buf are pinned here. The first run builds
# buf (a couple of minutes); later runs reuse Go's build cache.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Build with the patched toolchain go.mod names, whatever the environment says.
export GOTOOLCHAIN="$(awk '$1 == "toolchain" { print $2 }' go.mod)"
GO="${GO:-go}"

buf_version=v1.75.0
grpc_plugin_version=v1.6.2
protobuf_version="$(awk '$1 == "google.golang.org/protobuf" { print $2; exit }' go.mod)"

die() {
	echo "gen-proto: $*" >&2
	exit 1
}

[[ -n "$protobuf_version" ]] || die "go.mod does not require google.golang.org/protobuf"
check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
*) die "usage: $0 [--check]" ;;
esac

# The files the sum covers, relative to the root: the definitions, then
# what is generated from them.
sum_file=internal/node/push/generated.sum
inputs=(proto/coffer/provider/v1/push.proto)
outputs=(internal/node/push/push.pb.go internal/node/push/push_grpc.pb.go)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
GOBIN="$work/bin" "$GO" install "google.golang.org/protobuf/cmd/protoc-gen-go@$protobuf_version"
GOBIN="$work/bin" "$GO" install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$grpc_plugin_version"
GOBIN="$work/bin" "$GO" install "github.com/bufbuild/buf/cmd/buf@$buf_version"
export PATH="$work/bin:$PATH"

out="$root"
if ((check)); then
	out="$work/out"
	mkdir -p "$out"
fi
(cd proto && buf lint && buf generate --output "$out")

# The sum: sha256sum's format, so `sha256sum -c` from the root checks it too.
(
	cd "$root"
	sha256sum "${inputs[@]}"
	cd "$out"
	sha256sum "${outputs[@]}"
) >"$out/generated.sum.new"

if ((check)); then
	status=0
	for f in "${outputs[@]}"; do
		cmp -s "$out/$f" "$root/$f" || {
			echo "gen-proto: $f is stale: run scripts/gen-proto.sh" >&2
			status=1
		}
	done
	cmp -s "$out/generated.sum.new" "$root/$sum_file" || {
		echo "gen-proto: $sum_file is stale: run scripts/gen-proto.sh" >&2
		status=1
	}
	exit "$status"
fi
mv "$out/generated.sum.new" "$root/$sum_file"
