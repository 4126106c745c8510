#!/usr/bin/env bash
# Checks Coffer for known vulnerabilities offline: govulncheck against a Go
# vulnerability database built from the golang.org/x/vulndb module, which the
# Go module proxy serves (its data/osv, indexed by its own cmd/indexdb). No
# other vulnerability service is reachable from CI or a developer machine.
#
#   scripts/vulndb.sh check    build what is missing, then run govulncheck on
#                              the main module's packages; exits non-zero on
#                              any reachable vulnerability
#   scripts/vulndb.sh db       build what is missing and print the database
#                              directory (for govulncheck -db file://DIR)
#   scripts/vulndb.sh update   move the vulndb pin to the newest version the
#                              proxy serves (then commit tools/vuln)
#
# The pins live in one place, the tools module tools/vuln: its go.mod names
# golang.org/x/vuln (govulncheck) and golang.org/x/vulndb (the data and the
# indexer), and its go.sum holds their hashes. What is built is cached in
#   ${COFFER_VULNDB_CACHE:-<repo>/.cache/vulndb}
# bin/ holds the two commands, stamped with a hash of tools/vuln's go.mod and
# go.sum; db-<vulndb version>/ holds the database. A warm run builds nothing
# and costs only the govulncheck scan. Progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Scan and build with the patched toolchain go.mod names, whatever the
# environment says: govulncheck reports the standard library of the go
# command it runs, so the toolchain is part of what is checked. A caller that
# sets COFFER_VULN_TOOLCHAIN (for example to local) scans another one.
export GOTOOLCHAIN="${COFFER_VULN_TOOLCHAIN:-$(awk '$1 == "toolchain" { print $2 }' "$root/go.mod")}"
export GOWORK=off
tools="$root/tools/vuln"
GO="${GO:-go}"
cache="${COFFER_VULNDB_CACHE:-$root/.cache/vulndb}"

die() {
	echo "vulndb: $*" >&2
	exit 1
}

command -v "$GO" >/dev/null 2>&1 || die "no Go toolchain ('$GO') on PATH; install Go first"
[[ -f "$tools/go.mod" ]] || die "missing $tools/go.mod"

pinned() { # pinned MODULE: its version in tools/vuln/go.mod
	awk -v m="$1" '$1 == m { print $2; exit }' "$tools/go.mod"
}

tmp=""
cleanup() { [[ -z "$tmp" ]] || rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
scratch() { # a temporary directory beside the cache, so renames stay atomic
	mkdir -p "$cache" || die "cannot create the cache directory $cache"
	[[ -n "$tmp" ]] || tmp="$(mktemp -d "$cache/.build.XXXXXX")"
}

# ensure_bin builds govulncheck and indexdb from tools/vuln unless bin/
# already holds a build of the current pins. Both are built before either
# is moved into place, so a failed build never leaves a mixed pair.
ensure_bin() {
	local stamp
	stamp="$(cat "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -d' ' -f1)"
	if [[ -x "$cache/bin/govulncheck" && -x "$cache/bin/indexdb" &&
		-f "$cache/bin/stamp" && "$(cat "$cache/bin/stamp")" == "$stamp" ]]; then
		return 0
	fi
	scratch
	echo "vulndb: building govulncheck $(pinned golang.org/x/vuln) and indexdb from the Go module proxy (a cold module and build cache takes a few minutes)..." >&2
	local start=$SECONDS
	mkdir -p "$tmp/bin"
	(cd "$tools" && CGO_ENABLED=0 "$GO" build -mod=readonly -trimpath -o "$tmp/bin/" \
		golang.org/x/vuln/cmd/govulncheck golang.org/x/vulndb/cmd/indexdb) ||
		die "building the tools failed (see above); the Go module proxy must be reachable and $tools/go.sum complete"
	echo "$stamp" >"$tmp/bin/stamp"
	rm -rf "$cache/bin"
	mv "$tmp/bin" "$cache/bin"
	echo "vulndb: built govulncheck and indexdb in $((SECONDS - start))s" >&2
}

# ensure_db indexes the pinned vulndb's data/osv into db-<version>/ unless
# it is already there, removes the databases of earlier pins, and sets db to
# the directory. It runs in this shell, not in a $(...) subshell, so that the
# EXIT trap sees the scratch directory it makes.
db=""
ensure_db() {
	local version dir
	version="$(pinned golang.org/x/vulndb)"
	[[ -n "$version" ]] || die "tools/vuln/go.mod does not require golang.org/x/vulndb"
	dir="$cache/db-$version"
	db="$dir"
	if [[ -f "$dir/index/db.json" ]]; then
		return 0
	fi
	ensure_bin
	scratch
	local start=$SECONDS src
	# The module cache holds the data read-only and verified against go.sum.
	src="$(cd "$tools" && "$GO" mod download -json golang.org/x/vulndb |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -n "$src" && -d "$src/data/osv" ]] ||
		die "could not download golang.org/x/vulndb@$version from the Go module proxy"
	echo "vulndb: indexing $(find "$src/data/osv" -name '*.json' | wc -l) OSV entries of golang.org/x/vulndb@$version..." >&2
	"$cache/bin/indexdb" -vulns "$src/data/osv" -out "$tmp/db" ||
		die "indexdb failed on $src/data/osv"
	[[ -f "$tmp/db/index/db.json" ]] || die "indexdb wrote no index/db.json"
	local old
	for old in "$cache"/db-*; do
		[[ -e "$old" && "$old" != "$dir" ]] && rm -rf "$old"
	done
	mv "$tmp/db" "$dir"
	echo "vulndb: built the database in $((SECONDS - start))s: $dir" >&2
}

case "${1:-}" in
db)
	ensure_db
	echo "$db"
	;;
check)
	ensure_db
	ensure_bin
	echo "vulndb: govulncheck ./... with $("$GO" env GOVERSION), database golang.org/x/vulndb@$(pinned golang.org/x/vulndb)" >&2
	# Exit status 3 means reachable vulnerabilities; govulncheck has printed
	# each with the call path that reaches it.
	status=0
	(cd "$root" && "$cache/bin/govulncheck" -db "file://$db" ./...) || status=$?
	case "$status" in
	0) ;;
	3) die "reachable vulnerabilities above: bump the module that govulncheck names ('Fixed in'), or the toolchain line of go.mod for the standard library" ;;
	*) die "govulncheck failed (exit status $status)" ;;
	esac
	;;
update)
	old="$(pinned golang.org/x/vulndb)"
	(cd "$tools" && "$GO" get golang.org/x/vulndb@latest && "$GO" mod tidy) ||
		die "could not move golang.org/x/vulndb to the newest version the proxy serves"
	new="$(pinned golang.org/x/vulndb)"
	if [[ "$old" == "$new" ]]; then
		echo "vulndb: golang.org/x/vulndb is already at the newest version the proxy serves, $new" >&2
	else
		echo "vulndb: golang.org/x/vulndb $old -> $new; commit tools/vuln/go.mod and go.sum" >&2
	fi
	;;
*)
	die "usage: $0 check|db|update"
	;;
esac
