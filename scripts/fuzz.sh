#!/usr/bin/env bash
# Runs every native Go fuzz target of the module, one after the other, each
# for FUZZTIME, and prints a table of executions and crashes per target.
#
#   scripts/fuzz.sh                 fuzz every target (FUZZTIME, default 1m)
#   scripts/fuzz.sh --only Restore  only the targets whose name matches
#   scripts/fuzz.sh --list          list the targets and their packages
#   scripts/fuzz.sh --check         check each target has a committed corpus
#   scripts/fuzz.sh --update-seeds  regenerate the generated seed corpora
#
# A crash is written by go test to the target's testdata/fuzz/FuzzX/; the
# script goes on with the other targets and fails at the end. Workers:
# FUZZPARALLEL (default 1, the machine is shared). Interesting inputs are
# minimized for FUZZMINIMIZETIME (default 50x): go test's default of 60s
# per input leaves slow targets minimizing most of the run, and the
# executions spent minimizing are not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-1m}
FUZZPARALLEL=${FUZZPARALLEL:-1}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-50x}

# targets prints "package-dir target" for every func FuzzX(f *testing.F).
targets() {
	grep -rHo --include='*_test.go' -E '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' cmd internal test |
		sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+).*#\1 \2#' | sort -u
}

mode=fuzz
filter=.
while [ $# -gt 0 ]; do
	case "$1" in
	--list) mode=list ;;
	--check) mode=check ;;
	--update-seeds) mode=update ;;
	--only) filter=$2; shift ;;
	*) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

case $mode in
list)
	targets | grep -E " .*$filter" || true
	exit 0
	;;
check)
	bad=0
	while read -r dir name; do
		if ! ls "$dir/testdata/fuzz/$name/"* >/dev/null 2>&1; then
			echo "$dir: $name has no seed corpus in testdata/fuzz/$name" >&2
			bad=1
		fi
	done < <(targets)
	exit $bad
	;;
update)
	for dir in $(targets | awk '{print $1}' | sort -u); do
		if grep -q 'func TestSeedCorpus' "$dir"/*_test.go; then
			$GO test -count=1 -run '^TestSeedCorpus$' "./$dir" -args -update-seeds
		fi
	done
	exit 0
	;;
esac

results=()
failed=0
while read -r dir name; do
	echo "== $dir $name ($FUZZTIME)"
	log=$(mktemp)
	status=PASS
	if ! $GO test -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" \
		-parallel "$FUZZPARALLEL" "./$dir" >"$log" 2>&1; then
		status=FAIL
		failed=1
	fi
	last=$(grep -E '^fuzz: elapsed' "$log" | tail -1 || true)
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	crash=$(sed -nE 's#.*Failing input written to (.*)#\1#p' "$log" | head -1)
	if [ "$status" = FAIL ]; then
		grep -vE '^fuzz: elapsed' "$log" | tail -25
	fi
	results+=("$(printf '%-26s %-44s %12s  %s %s' "$name" "$dir" "${execs:-?}" "$status" "$crash")")
	rm -f "$log"
done < <(targets | grep -E " .*$filter")

printf '\n%-26s %-44s %12s  %s\n' target package execs result
printf '%s\n' "${results[@]}"
exit $failed
