#!/usr/bin/env bash
# Builds Let's Encrypt's ACME test server, pebble, that the ACME issuer
# tests run (internal/testing/pebbletest). It is compiled from the Go module
# proxy in the separate tools module tools/pebble, so that pebble's
# dependencies never enter the main module's graph, and cached in
#   ${COFFER_PEBBLE_DIR:-<repo>/.cache/pebble/<pebble version>}
# rebuilt only when tools/pebble has changed since. The binary's path is
# printed on stdout; everything else goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GOTOOLCHAIN="$(awk '$1 == "toolchain" { print $2 }' "$root/go.mod")"
tools="$root/tools/pebble"
GO="${GO:-go}"

die() {
	echo "pebble: $*" >&2
	exit 1
}

command -v "$GO" >/dev/null 2>&1 || die "no Go toolchain ('$GO') on PATH; install Go first"
version="$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/letsencrypt/pebble/v2") { print $(i+1); exit } }' "$tools/go.mod")"
[[ -n "$version" ]] || die "tools/pebble/go.mod does not require github.com/letsencrypt/pebble/v2"
dir="${COFFER_PEBBLE_DIR:-$root/.cache/pebble/$version}"
mkdir -p "$dir" || die "cannot create $dir"
stamp="$(cat "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -d' ' -f1)"
if [[ -x "$dir/pebble" && -f "$dir/pebble.stamp" && "$(cat "$dir/pebble.stamp")" == "$stamp" ]]; then
	echo "$dir/pebble"
	exit 0
fi
export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
# Built beside the cache and renamed into place, so an interrupted build
# never leaves a partial binary that a later run would take as cached.
tmp="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "pebble: building pebble $version from the Go module proxy..." >&2
(cd "$tools" && "$GO" build -o "$tmp/pebble" -ldflags "-s -w" github.com/letsencrypt/pebble/v2/cmd/pebble) ||
	die "building pebble failed (see above); the Go module proxy must be reachable and $tools/go.sum complete"
echo "$stamp" >"$tmp/pebble.stamp"
mv -f "$tmp/pebble" "$dir/pebble"
mv -f "$tmp/pebble.stamp" "$dir/pebble.stamp"
echo "$dir/pebble"
