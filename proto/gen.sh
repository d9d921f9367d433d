#!/usr/bin/env bash
# Regenerates the Go code for proto/fdx/v1 with pinned generators.
#   bash proto/gen.sh          write the generated files
#   bash proto/gen.sh --check  fail if the committed files are stale
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.12      # matches google.golang.org/protobuf in go.mod
PROTOC_GEN_GO_GRPC_VERSION=v1.6.0
tools="$PWD/.tools/bin"

if ! command -v protoc >/dev/null 2>&1; then
  echo "proto/gen.sh: installing protoc (Debian protobuf-compiler)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq protobuf-compiler >/dev/null
  fi
fi
mkdir -p "$tools"
[ -x "$tools/protoc-gen-go" ] || GOBIN="$tools" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
[ -x "$tools/protoc-gen-go-grpc" ] || GOBIN="$tools" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"

out=proto
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
PATH="$tools:$PATH" protoc -I proto \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  proto/fdx/v1/fdx.proto
if [ "${1:-}" = "--check" ]; then
  for f in fdx.pb.go fdx_grpc.pb.go; do
    if ! diff -u "proto/fdx/v1/$f" "$out/fdx/v1/$f"; then
      echo "proto/gen.sh: proto/fdx/v1/$f is stale; run: bash proto/gen.sh" >&2
      exit 1
    fi
  done
  echo "proto/gen.sh: generated code is up to date"
fi
