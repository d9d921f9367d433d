#!/usr/bin/env bash
# deploy/gcp/function-smoke-selftest.sh: a test of function-smoke.sh. It
# stages the bundle, breaks its root package in the two ways that matter,
# and expects function-smoke.sh --bundle to fail on each, for the right
# reason:
#
#  1. the root as it used to be staged (a blank import of the function
#     package, nothing else): the buildpack's rule picks the v1.1 template,
#     whose main refers to userfunction.Handler, and the build fails with
#     "undefined: userfunction.Handler", as `gcloud functions deploy` did;
#  2. a root that exports Handler but lacks the functions import: it builds
#     (v1.1 template), but breaks our contract that the buildpack picks the
#     declarative template, and the smoke test must say so.
#
# Prints "function-smoke-selftest: PASS" when both fail as expected.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "function-smoke-selftest: FAIL: $*" >&2; exit 1; }

bash "$repo/deploy/gcp/stage-function.sh" "$work/good" 2>/dev/null

# broken NAME writes stdin as the root fn.go of a copy of the good stage.
broken() {
  cp -a "$work/good" "$work/$1"
  cat >"$work/$1/fn.go"
}

# expect_failure NAME WANT runs the smoke test on stage NAME: it must exit
# non-zero and its output must contain WANT.
expect_failure() {
  local name=$1 want=$2
  if bash "$repo/deploy/gcp/function-smoke.sh" --bundle "$work/$name" >"$work/$name.log" 2>&1; then
    cat "$work/$name.log" >&2
    fail "$name: function-smoke.sh passed, want a failure"
  fi
  grep -qF -- "$want" "$work/$name.log" || {
    cat "$work/$name.log" >&2
    fail "$name: function-smoke.sh failed, but its output lacks '$want'"
  }
  echo "function-smoke-selftest: $name: failed as expected: $(grep -F -m 1 -- "$want" "$work/$name.log")"
}

broken no-import <<'GO'
package fdxfunction

import _ "github.com/fdxkafka/fdxkafka/function"
GO
expect_failure no-import "undefined: userfunction.Handler"

broken handler-only <<'GO'
package fdxfunction

import (
	"net/http"

	"github.com/fdxkafka/fdxkafka/function"
)

func Handler(w http.ResponseWriter, r *http.Request) { function.Handler(w, r) }
GO
expect_failure handler-only "does not import github.com/GoogleCloudPlatform/functions-framework-go/functions"

echo "function-smoke-selftest: PASS (the smoke test fails when the staged root lacks the functions import)"
