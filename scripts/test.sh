#!/usr/bin/env bash
# The project's test command (README "Testing"; CI runs it through .ci/run).
#
# 1. checks: generated protobuf code is current, gofmt, go vet, go.mod tidy;
# 2. the whole Go test suite on the embedded Kafka broker (franz-go kfake),
#    then the packages that run goroutines again under the race detector;
# 3. the whole suite again on a real Apache Kafka broker started by
#    deploy/kafka/kafka.sh (stopped on exit, also when tests fail), with
#    two more beside it for the tests that need them: a broker in secure
#    mode (SASL/SCRAM + ACLs: FDX_KAFKA_SECURE_BROKERS, FDX_KAFKA_SECURE_DIR;
#    and a SASL_SSL listener with certificates from internal/testcerts:
#    FDX_KAFKA_SECURE_TLS_BROKERS) and a 3-node cluster
#    (FDX_KAFKA_CLUSTER_BROKERS, FDX_KAFKA_CLUSTER_DIR);
# 4. the Python client's tests (clients/python, pytest in a venv that
#    scripts/python-env.sh makes from PyPI): Python clients in jobs of the
#    Go aggregator on the embedded broker, over gRPC and, unless quick, on
#    the real broker;
# 5. the network testbed's tests (evaluations/netbench, build tag netns):
#    real namespaces, veth, a bridge and tc, so they need root, and fail
#    saying so without it; afterwards no testbed namespace may be left;
# 6. short bounded fuzz runs and the deploy/ script checks.
#
# FDX_TEST_QUICK=1 skips step 3 and the Python tests' real-broker runs (no
# Java/Maven needed). FDX_TEST_NO_NETNS=1 skips step 5 and says NOT RUN (for
# a machine without root).
set -euo pipefail
cd "$(dirname "$0")/.."

export FDX_KAFKA_PORT="${FDX_KAFKA_PORT:-19092}"
export FDX_KAFKA_CONTROLLER_PORT="${FDX_KAFKA_CONTROLLER_PORT:-19093}"
# The secure broker (client, controller, TLS port) and the cluster (client
# ports base..base+2, controller ports base+3..base+5). All below 32768, outside
# Linux's ephemeral port range, where another process's outgoing
# connection can hold a port just when a broker wants to bind it.
secure_port="${FDX_TEST_SECURE_PORT:-19094}"
cluster_port="${FDX_TEST_CLUSTER_PORT:-19100}"
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

# python_tests runs the Python client's tests; FDX_KAFKA_BROKERS and
# FDX_KAFKA_SECURE_BROKERS/_DIR, when set, add the real brokers to the
# embedded one and gRPC.
python_tests() {
  local py
  py=$(bash scripts/python-env.sh)
  (cd clients/python && "$py" -m pytest -p no:cacheprovider -q -rs tests)
}

# The packages whose code runs goroutines: both channels and the chunk
# transfer, the function and its channel cache, the aggregator's round
# loop, strategies and scale-out, its metrics, and the fleet generator that
# drives a channel from many goroutines. The Kafka client is pure Go, so
# the race detector sees every access. About 1.5 min on 2 cores; the
# end-to-end job tests (aggregator/job, aggregator) run the same code and
# would triple that.
race_packages=(./shared/kafkachan ./shared/transfer ./shared/grpcchan ./client/dialcache
  ./aggregator/coordinator ./aggregator/strategy ./aggregator/scaleout ./aggregator/metrics
  ./function ./evaluations/fleet)
step "go test -race on the embedded broker"
go test -race -count=1 -timeout "$timeout" "${race_packages[@]}"

if [ "${FDX_TEST_QUICK:-0}" != 1 ]; then
  step "starting real Apache Kafka brokers (deploy/kafka/kafka.sh): plain, secure, 3-node cluster"
  # The secure broker's TLS listener gets a throwaway CA and certificate.
  certs=$(mktemp -d /tmp/fdxkafka-test-certs.XXXXXX)
  eval "$(go run ./internal/testcerts/cmd/testcerts -dir "$certs")"
  secure() {
    FDX_KAFKA_PORT=$secure_port FDX_KAFKA_CONTROLLER_PORT=$((secure_port + 1)) FDX_KAFKA_TLS_PORT=$((secure_port + 2)) \
      FDX_KAFKA_TLS_CA=$FDX_KAFKA_TLS_CA FDX_KAFKA_TLS_CERT=$FDX_KAFKA_TLS_CERT FDX_KAFKA_TLS_KEY=$FDX_KAFKA_TLS_KEY \
      FDX_KAFKA_SECURE=1 bash deploy/kafka/kafka.sh "$@"
  }
  cluster() { FDX_KAFKA_PORT=$cluster_port FDX_KAFKA_CONTROLLER_PORT=$((cluster_port + 3)) FDX_KAFKA_NODES=3 bash deploy/kafka/kafka.sh "$@"; }
  trap 'bash deploy/kafka/kafka.sh stop || true; secure stop || true; cluster stop || true; rm -rf "$certs"' EXIT
  bash deploy/kafka/kafka.sh fetch
  # Side by side: the cluster's start is the longest.
  bash deploy/kafka/kafka.sh start & plain_pid=$!
  secure start & secure_pid=$!
  cluster start & cluster_pid=$!
  wait "$plain_pid" && wait "$secure_pid" && wait "$cluster_pid"
  step "go test on the real brokers 127.0.0.1:$FDX_KAFKA_PORT, :$secure_port and :$((secure_port + 2)) (secure, SASL_SSL), :$cluster_port-$((cluster_port + 2)) (cluster)"
  FDX_KAFKA_BROKERS="127.0.0.1:$FDX_KAFKA_PORT" \
    FDX_KAFKA_SECURE_BROKERS="127.0.0.1:$secure_port" FDX_KAFKA_SECURE_DIR="/tmp/fdxkafka-broker-$secure_port" \
    FDX_KAFKA_SECURE_TLS_BROKERS="127.0.0.1:$((secure_port + 2))" \
    FDX_KAFKA_CLUSTER_BROKERS="127.0.0.1:$cluster_port,127.0.0.1:$((cluster_port + 1)),127.0.0.1:$((cluster_port + 2))" \
    FDX_KAFKA_CLUSTER_DIR="/tmp/fdxkafka-broker-$cluster_port" \
    go test -count=1 -timeout "$timeout" ./...
  step "Python client tests (embedded broker, real brokers 127.0.0.1:$FDX_KAFKA_PORT and :$secure_port (secure), gRPC)"
  FDX_KAFKA_BROKERS="127.0.0.1:$FDX_KAFKA_PORT" \
    FDX_KAFKA_SECURE_BROKERS="127.0.0.1:$secure_port" FDX_KAFKA_SECURE_DIR="/tmp/fdxkafka-broker-$secure_port" \
    python_tests
fi

if [ "${FDX_TEST_NO_NETNS:-0}" = 1 ]; then
  step "network testbed tests NOT RUN (FDX_TEST_NO_NETNS=1)"
else
  step "network testbed (namespaces on a bridge, 198.18.0.0/15, tc; needs root): go test -tags netns"
  netns_left() { ip netns list | awk '$1 ~ /^fdxnb-/ {print $1}'; }
  if ! go test -tags netns -count=1 -timeout 10m ./evaluations/netbench/...; then
    # A test killed by its timeout runs no cleanup of its own.
    go run ./evaluations/netbench cleanup || true
    exit 1
  fi
  left=$(netns_left)
  if [ -n "$left" ]; then
    echo "the testbed tests left namespaces behind:"; echo "$left"
    go run ./evaluations/netbench cleanup || true
    exit 1
  fi
fi

step "bounded fuzz runs"
bash scripts/fuzz.sh

step "deploy/ scripts: shellcheck and dry runs"
bash deploy/gcp/check.sh

step "the Cloud Function built and run as the Go buildpack would"
bash deploy/gcp/function-smoke.sh
bash deploy/gcp/function-smoke-selftest.sh

step "all tests passed"
