#!/usr/bin/env bash
# Measures a secret GET against the machine's limit, for make bench-report:
# builds coffer, starts `coffer dev` on a fresh data directory and a free
# loopback port, runs `coffer bench get --ceiling --rounds 3` against it
# (the server and the bare handler alternate, and the medians are kept:
# one round's ratio varies by a tenth here), and writes
# its JSON to ${1:-<repo>/docs/performance/data/get.json}. The server is stopped and
# the data directory removed however the run ends.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GOTOOLCHAIN="$(awk '$1 == "toolchain" { print $2 }' "$root/go.mod")"
GO="${GO:-go}"
out="${1:-$root/docs/performance/data/get.json}"
duration="${BENCH_GET_DURATION:-5s}"
rounds="${BENCH_GET_ROUNDS:-3}"

work="$(mktemp -d)"
pid=""
cleanup() {
	if [[ -n "$pid" ]]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && "$GO" build -o "$work/coffer" ./cmd/coffer)
"$work/coffer" dev --data-dir "$work/data" --port 0 >"$work/dev.log" 2>&1 &
pid=$!
# dev.env is written once the server is bootstrapped and listening.
for _ in $(seq 600); do
	[[ -s "$work/data/dev.env" ]] && break
	kill -0 "$pid" 2>/dev/null || { cat "$work/dev.log" >&2; echo "bench-get: coffer dev exited" >&2; exit 1; }
	sleep 0.1
done
[[ -s "$work/data/dev.env" ]] || { cat "$work/dev.log" >&2; echo "bench-get: coffer dev wrote no dev.env within 60s" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
"$work/coffer" --env-file "$work/data/dev.env" -o json bench get --ceiling --rounds "$rounds" --duration "$duration" >"$work/get.json"
mv -f "$work/get.json" "$out"
echo "bench-get: wrote $out" >&2
