#!/usr/bin/env bash
# Short, bounded runs of every Go fuzz target in the repository (CI runs this
# from scripts/test.sh). Targets are found by grepping the *_test.go files for
# "func Fuzz..."; each runs on its own, one package and one target per
# go test invocation, for FDX_FUZZTIME each (default 15s; a count such as
# 20000x also works).
#
# A failing input is saved by go test under <package>/testdata/fuzz/<Target>/;
# once the bug is fixed, check the file in as a regression seed.
#
# Go 1.26 has a race at the end of a duration-bounded run (go.dev/issue/75804):
# a target can fail with a bare "context deadline exceeded" and no failing
# input. Such a run is reported as a flake and does not fail the script; any
# other failure does.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime="${FDX_FUZZTIME:-15s}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Lines "<package dir> <target>", sorted, from every test file outside
# hidden, vendor and testdata directories.
targets=()
while IFS= read -r file; do
  dir=$(dirname "$file")
  while IFS= read -r name; do
    targets+=("$dir $name")
  done < <(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file")
done < <(grep -rl --include='*_test.go' --exclude-dir='.?*' --exclude-dir=vendor \
  --exclude-dir=testdata '^func Fuzz' . | sort)

if [ "${#targets[@]}" -eq 0 ]; then
  echo "fuzz.sh: no fuzz targets found" >&2
  exit 1
fi

# corpus lists the saved inputs of a target, one per line.
corpus() {
  if [ -d "$1/testdata/fuzz/$2" ]; then
    find "$1/testdata/fuzz/$2" -type f | sort
  fi
}

passed=() flaked=() failed=()
for t in "${targets[@]}"; do
  read -r dir name <<<"$t"
  printf '\n--- fuzzing %s in %s for %s\n' "$name" "$dir" "$fuzztime"
  before=$(corpus "$dir" "$name")
  if go test -run=NONE -fuzz="^${name}\$" -fuzztime="$fuzztime" "$dir/" 2>&1 | tee "$log"; then
    passed+=("$dir $name")
    continue
  fi
  new=$(comm -13 <(printf '%s\n' "$before") <(corpus "$dir" "$name") | sed '/^$/d')
  if [ -z "$new" ] && [ "$(grep -c -- '--- FAIL' "$log")" -eq 1 ] &&
    grep -A1 -- "--- FAIL: $name " "$log" | grep -qx '[[:space:]]*context deadline exceeded'; then
    echo "fuzz.sh: $name: 'context deadline exceeded' without a failing input: go.dev/issue/75804, not a bug in $dir" >&2
    flaked+=("$dir $name")
    continue
  fi
  if [ -n "$new" ]; then
    printf 'fuzz.sh: %s found a failing input:\n%s\n' "$name" "$new" >&2
  fi
  failed+=("$dir $name")
done

printf '\nfuzz targets run for %s each:\n' "$fuzztime"
for t in ${passed[@]+"${passed[@]}"}; do printf '  ok     %s\n' "$t"; done
for t in ${flaked[@]+"${flaked[@]}"}; do printf '  flake  %s (go.dev/issue/75804)\n' "$t"; done
for t in ${failed[@]+"${failed[@]}"}; do printf '  FAIL   %s\n' "$t"; done
[ "${#failed[@]}" -eq 0 ]
