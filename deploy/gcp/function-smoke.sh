#!/usr/bin/env bash
# Builds and runs the Cloud Function exactly as Google's Go buildpack would,
# then invokes it: the closest check of a deploy that needs no GCP project.
#
#  1. stage the upload bundle (deploy/gcp/stage-function.sh);
#  2. write the buildpack's generated main in a module of its own that
#     blank-imports the bundle's root package and serves FUNCTION_TARGET
#     with functions-framework-go, the bundle wired in with a replace;
#  3. build it with cgo (confluent-kafka-go needs it);
#  4. start an aggregator on an embedded broker and the function with
#     PORT, FUNCTION_TARGET=Handler and K_SERVICE (as on Cloud Run);
#  5. POST the PoC's JSON payload with a trace header: expect 200 and a
#     training summary, and a Cloud Logging JSON line carrying the trace.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "function-smoke: FAIL: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # host port seconds
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

echo "function-smoke: staging the bundle"
bash "$repo/deploy/gcp/stage-function.sh" "$work/bundle" >/dev/null

echo "function-smoke: generating the buildpack main"
mkdir -p "$work/app"
cat >"$work/app/main.go" <<'GO'
// Generated like the Go buildpack's main for functions registered with
// functions.HTTP in init: blank-import the source, serve FUNCTION_TARGET.
package main

import (
	"log"
	"os"

	_ "github.com/fdxkafka/fdxkafka"
	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"
)

func main() {
	port := "8080"
	if p := os.Getenv("PORT"); p != "" {
		port = p
	}
	if err := funcframework.Start(port); err != nil {
		log.Fatalf("funcframework.Start: %v", err)
	}
}
GO
ff_version=$(cd "$repo" && go list -m -f '{{.Version}}' github.com/GoogleCloudPlatform/functions-framework-go)
cp "$work/bundle/go.sum" "$work/app/go.sum"
(
  cd "$work/app"
  go mod init serverless_function_app >/dev/null 2>&1
  go mod edit -go="$(cd "$repo" && go list -m -f '{{.GoVersion}}')" \
    -require=github.com/fdxkafka/fdxkafka@v0.0.0 \
    -replace=github.com/fdxkafka/fdxkafka="$work/bundle" \
    -require=github.com/GoogleCloudPlatform/functions-framework-go@"$ff_version"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  echo "function-smoke: building with CGO_ENABLED=1"
  CGO_ENABLED=1 go build -o "$work/fn" .
)
(cd "$repo" && go build -o "$work/aggregator" ./aggregator)

bport=$(free_port)
fport=$(free_port)
job="smoke-$$"
"$work/aggregator" --embedded --broker "127.0.0.1:$bport" --job "$job" --minclients 1 --numrounds 1 \
  --dataset synthetic --eval-examples 200 --log-to text >"$work/aggregator.log" 2>&1 &
agg=$!
pids+=("$agg")
wait_port 127.0.0.1 "$bport" 60 || { cat "$work/aggregator.log"; fail "aggregator's broker did not come up"; }

PORT=$fport FUNCTION_TARGET=Handler K_SERVICE=fdx-smoke GOOGLE_CLOUD_PROJECT=smoke-project \
  "$work/fn" >"$work/fn.out" 2>"$work/fn.err" &
pids+=("$!")
wait_port 127.0.0.1 "$fport" 60 || { cat "$work/fn.err"; fail "function did not listen on PORT=$fport"; }

echo "function-smoke: POST to the function"
code=$(curl -sS -o "$work/resp.json" -w '%{http_code}' --max-time 120 \
  -H 'Content-Type: application/json' \
  -H 'X-Cloud-Trace-Context: 0123456789abcdef0123456789abcdef/123;o=1' \
  -d "{\"broker\": \"127.0.0.1:$bport\", \"client_id\": \"0\", \"channel\": \"kafka\", \"job\": \"$job\"}" \
  "http://127.0.0.1:$fport/")
cat "$work/resp.json"
[[ $code == 200 ]] || fail "HTTP $code"
grep -q '"round":1' "$work/resp.json" || fail "no round 1 in the summary"
grep -q '"examples":' "$work/resp.json" || fail "no examples in the summary"

code=$(curl -sS -o "$work/bad.json" -w '%{http_code}' -d '{"broker": ' "http://127.0.0.1:$fport/")
[[ $code == 400 ]] || fail "malformed JSON answered $code, want 400"

for _ in $(seq 1 300); do
  kill -0 "$agg" 2>/dev/null || break
  sleep 0.2
done
wait "$agg" || { cat "$work/aggregator.log"; fail "aggregator did not finish the job"; }

grep -q '"severity":"INFO"' "$work/fn.out" || { cat "$work/fn.out"; fail "no Cloud Logging severity field in the function's stdout"; }
grep -q '"logging.googleapis.com/trace":"projects/smoke-project/traces/0123456789abcdef0123456789abcdef"' "$work/fn.out" ||
  { cat "$work/fn.out"; fail "no trace field in the function's log"; }
echo "function-smoke: PASS (buildpack-style build, 200 with a training summary, 400 on bad JSON, Cloud Logging fields)"
