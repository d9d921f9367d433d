#!/usr/bin/env bash
# The project's test command (README "Testing"; CI runs it through .ci/run).
#
# 1. checks: generated protobuf code is current, gofmt, go vet, go.mod tidy;
# 2. the whole Go test suite on the embedded Kafka broker (franz-go kfake);
# 3. the whole suite again on a real Apache Kafka broker started by
#    deploy/kafka/kafka.sh (stopped on exit, also when tests fail);
# 4. short bounded fuzz runs and the deploy/ script checks.
#
# FDX_TEST_QUICK=1 skips step 3 (no Java/Maven needed).
set -euo pipefail
cd "$(dirname "$0")/.."

export FDX_KAFKA_PORT="${FDX_KAFKA_PORT:-19092}"
export FDX_KAFKA_CONTROLLER_PORT="${FDX_KAFKA_CONTROLLER_PORT:-19093}"
timeout="${FDX_TEST_TIMEOUT:-25m}"
started=$SECONDS

step() { printf '\n==> %s (%ds)\n' "$*" "$((SECONDS - started))"; }

step "system packages"
bash scripts/deps.sh

step "generated protobuf code is up to date"
bash proto/gen.sh --check

step "gofmt and go vet"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi
go vet ./...

step "go.mod and go.sum are tidy"
if ! go mod tidy -diff; then
  echo "go.mod/go.sum are not tidy; run: go mod tidy"; exit 1
fi

step "go test on the embedded broker"
go test -count=1 -timeout "$timeout" ./...

if [ "${FDX_TEST_QUICK:-0}" != 1 ]; then
  step "starting a real Apache Kafka broker (deploy/kafka/kafka.sh)"
  trap 'bash deploy/kafka/kafka.sh stop || true' EXIT
  bash deploy/kafka/kafka.sh start
  step "go test on the real broker 127.0.0.1:$FDX_KAFKA_PORT"
  FDX_KAFKA_BROKERS="127.0.0.1:$FDX_KAFKA_PORT" go test -count=1 -timeout "$timeout" ./...
fi

step "bounded fuzz runs"
bash scripts/fuzz.sh

step "deploy/ scripts: shellcheck and dry runs"
bash deploy/gcp/check.sh

step "the Cloud Function built and run as the Go buildpack would"
bash deploy/gcp/function-smoke.sh
bash deploy/gcp/function-smoke-selftest.sh

step "all tests passed"
