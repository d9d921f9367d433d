#!/usr/bin/env bash
# Regenerates the Go and Python code for proto/fdx/v1 with pinned generators.
#   bash proto/gen.sh          write the generated files
#   bash proto/gen.sh --check  fail if the committed files are stale
#
# Go: proto/fdx/v1/fdx.pb.go and fdx_grpc.pb.go. Python (the fdxkafka
# package in clients/python): src/fdxkafka/_pb/fdx/v1/fdx_pb2.py and
# fdx_pb2.pyi, from the same pinned protoc, and the gRPC stubs
# fdx_pb2_grpc.py from grpcio-tools' plugin at a pinned version.
#
# Everything that writes the generated files is pinned, protoc included:
# its version lands in the files' headers ("protoc v3.21.12"), so a check
# with whatever protoc the machine has would fail on a version string, not
# on stale code. protoc comes from Maven Central (com.google.protobuf:protoc,
# the artifact Maven and Gradle builds use) and the well-known types it
# imports (google/protobuf/timestamp.proto) from the same release's
# protobuf-java jar there, both checked against the SHA-256s below, into
# .tools/; the Go plugins come from the Go module proxy at fixed versions.
# The gRPC Python plugin exists only inside grpcio-tools (PyPI), compiled
# into its own copy of protoc: it runs from a venv in .tools/ with that
# version pinned. Only the stubs come from it, and they do not depend on
# its protoc's version; the messages come from the pinned protoc above.
# Needs curl, unzip and python3 the first time, then runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_VERSION=3.21.12
PROTOC_GEN_GO_VERSION=v1.36.12      # matches google.golang.org/protobuf in go.mod
PROTOC_GEN_GO_GRPC_VERSION=v1.6.0
# The stubs it writes require grpcio >= this version at run time
# (clients/python/pyproject.toml says so).
GRPCIO_TOOLS_VERSION=1.70.0
tools="$PWD/.tools/bin"

# protoc_sha256 PLATFORM prints the pinned SHA-256 of Maven Central's
# protoc-$PROTOC_VERSION-PLATFORM.exe (they match the .sha1 files there).
protoc_sha256() {
  case $1 in
    linux-x86_64) echo e6a75cf6660945fbfec0d321808442ce3649cd7820079eece1098c881b315f55 ;;
    linux-aarch_64) echo aa609ec1d4b08375a140b1a42340684932cd2cd0cd56ffe8d791a72f9f3894bc ;;
    osx-x86_64) echo 365cf2a2b2a7f06ba398aa3b5f0365dbb373c330c69e73736cd74bb19b7139d0 ;;
    osx-aarch_64) echo 9f40368c858666e7036df0b9b58a4acd085fed58ab531294c3e5b5820f8af360 ;;
    *) return 1 ;;
  esac
}

# The same release's protobuf-java jar, for the well-known .proto files.
PROTOBUF_JAVA_SHA256=3f3edbda9286246080f3eaf561dd6b0d5a2b1f1008f6909115c8609ceae9df87

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1
}

# fetch URL SHA256 FILE downloads URL to FILE when its SHA-256 matches.
fetch() {
  local tmp
  echo "proto/gen.sh: fetching $1" >&2
  tmp=$(mktemp "$tools/fetch.XXXXXX")
  if ! curl -fsSL --retry 3 -o "$tmp" "$1"; then
    rm -f "$tmp"
    echo "proto/gen.sh: could not download $1" >&2
    exit 1
  fi
  if [ "$(sha256 "$tmp")" != "$2" ]; then
    rm -f "$tmp"
    echo "proto/gen.sh: checksum mismatch for $1" >&2
    exit 1
  fi
  mv "$tmp" "$3"
}

# install_protoc puts the pinned protoc at $protoc and the well-known
# types under $include.
install_protoc() {
  local os arch platform want maven
  case $(uname -s) in
    Linux) os=linux ;;
    Darwin) os=osx ;;
    *) echo "proto/gen.sh: no pinned protoc for $(uname -s)" >&2; exit 1 ;;
  esac
  case $(uname -m) in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch_64 ;;
    *) echo "proto/gen.sh: no pinned protoc for $(uname -m)" >&2; exit 1 ;;
  esac
  platform=$os-$arch
  want=$(protoc_sha256 "$platform")
  maven=https://repo1.maven.org/maven2/com/google/protobuf
  fetch "$maven/protoc/$PROTOC_VERSION/protoc-$PROTOC_VERSION-$platform.exe" "$want" "$protoc.part"
  fetch "$maven/protobuf-java/$PROTOC_VERSION/protobuf-java-$PROTOC_VERSION.jar" "$PROTOBUF_JAVA_SHA256" "$tools/protobuf-java.jar"
  rm -rf "$include"
  unzip -q -o "$tools/protobuf-java.jar" 'google/protobuf/*.proto' -d "$include"
  rm -f "$tools/protobuf-java.jar"
  chmod +x "$protoc.part"
  mv "$protoc.part" "$protoc"
}

mkdir -p "$tools"
protoc="$tools/protoc-$PROTOC_VERSION"
include="$tools/protoc-$PROTOC_VERSION-include"
if [ ! -x "$protoc" ] || [ ! -f "$include/google/protobuf/timestamp.proto" ]; then
  install_protoc
fi
[ -x "$tools/protoc-gen-go" ] || GOBIN="$tools" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
[ -x "$tools/protoc-gen-go-grpc" ] || GOBIN="$tools" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
grpcvenv="$PWD/.tools/grpcio-tools-$GRPCIO_TOOLS_VERSION"
if [ ! -x "$grpcvenv/bin/python" ] || ! "$grpcvenv/bin/python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "proto/gen.sh: installing grpcio-tools==$GRPCIO_TOOLS_VERSION into $grpcvenv" >&2
  rm -rf "$grpcvenv"
  python3 -m venv "$grpcvenv"
  "$grpcvenv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: "grpcio-tools==$GRPCIO_TOOLS_VERSION"
fi

out=proto
pyout=clients/python/src
pydir=fdxkafka/_pb/fdx/v1
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  pyout="$out/py"
  mkdir -p "$pyout"
  trap 'rm -rf "$out"' EXIT
fi
# Only the pinned plugins on PATH's front; protoc is called by its path, so
# a system protoc never takes part.
PATH="$tools:$PATH" "$protoc" -I proto -I "$include" \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  proto/fdx/v1/fdx.proto
# Python: the .proto is mapped to fdxkafka/_pb/fdx/v1/fdx.proto so that the
# generated modules import each other inside the package
# (fdxkafka._pb.fdx.v1.fdx_pb2) and cannot clash with another package's
# fdx.v1; the proto package, and with it every message and gRPC method
# name on the wire, stays fdx.v1.
"$protoc" -I fdxkafka/_pb=proto -I "$include" --python_out="$pyout" --pyi_out="$pyout" proto/fdx/v1/fdx.proto
"$grpcvenv/bin/python" -m grpc_tools.protoc -I fdxkafka/_pb=proto -I "$include" --grpc_python_out="$pyout" proto/fdx/v1/fdx.proto
if [ "${1:-}" = "--check" ]; then
  for f in fdx.pb.go fdx_grpc.pb.go; do
    if ! diff -u "proto/fdx/v1/$f" "$out/fdx/v1/$f"; then
      echo "proto/gen.sh: proto/fdx/v1/$f is stale; run: bash proto/gen.sh" >&2
      exit 1
    fi
  done
  for f in fdx_pb2.py fdx_pb2.pyi fdx_pb2_grpc.py; do
    if ! diff -u "clients/python/src/$pydir/$f" "$pyout/$pydir/$f"; then
      echo "proto/gen.sh: clients/python/src/$pydir/$f is stale; run: bash proto/gen.sh" >&2
      exit 1
    fi
  done
  echo "proto/gen.sh: generated code is up to date (protoc $PROTOC_VERSION, protoc-gen-go $PROTOC_GEN_GO_VERSION, protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION, grpcio-tools $GRPCIO_TOOLS_VERSION)"
fi
