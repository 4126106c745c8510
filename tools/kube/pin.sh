#!/usr/bin/env bash
# Pins this tools module to one Kubernetes release: requires k8s.io/kubernetes
# at that version and replaces every k8s.io staging module that its go.mod
# names as v0.0.0 with the matching v0.<minor>.<patch> release.
#
# k8s.io/kubernetes is not meant to be imported: its go.mod requires the
# staging modules at the placeholder version v0.0.0 and points them at
# ./staging through replace directives, which Go ignores outside the main
# module. Without these replaces the build cannot resolve v0.0.0. The list
# is read from the release's own go.mod so that it follows new staging
# modules from release to release instead of going stale by hand.
#
# kubectl has a module of its own (kubectl/), pinned to the same release here.
#
# Usage: ./pin.sh v1.36.3   (then commit go.mod and go.sum, here and in kubectl/)
set -euo pipefail

version="${1:?usage: $0 vMAJOR.MINOR.PATCH, e.g. v1.36.3}"
if [[ ! "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
	echo "pin.sh: $version is not a v1.MINOR.PATCH Kubernetes release" >&2
	exit 1
fi
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

cd "$(dirname "$0")"

gomod="$(go mod download -json "k8s.io/kubernetes@$version" |
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
if [[ -z "$gomod" || ! -f "$gomod" ]]; then
	echo "pin.sh: could not download the go.mod of k8s.io/kubernetes@$version" >&2
	exit 1
fi

# Every "k8s.io/<name> v0.0.0" requirement, with or without "// indirect".
mapfile -t mods < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$gomod" | sort -u)
if [[ ${#mods[@]} -eq 0 ]]; then
	echo "pin.sh: no v0.0.0 staging requirements found in $gomod" >&2
	exit 1
fi

args=(-require="k8s.io/kubernetes@$version")
for m in "${mods[@]}"; do
	args+=(-replace="$m=$m@$staging")
done
for module in . kubectl; do
	(
		cd "$module"
		# Drop the replaces of an earlier pin first, so modules that a
		# release no longer has do not linger.
		for old in $(go mod edit -json | awk -F'"' '/"Old": \{/ { getline; print $4 }'); do
			go mod edit -dropreplace="$old"
		done
		go mod edit "${args[@]}"
		go mod tidy
	)
done

echo "pinned k8s.io/kubernetes $version with ${#mods[@]} staging modules at $staging" >&2
