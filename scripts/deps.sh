#!/usr/bin/env bash
# Installs the system packages the build and tests need, from Debian's
# archive, only when missing: unzip (proto/gen.sh unpacks its pinned protoc's
# well-known types), python3 and its venv module (the Python client's
# tests), iproute2 (ip and tc: the network testbed), shellcheck
# (deploy/gcp/check.sh). Go, gcc (only for go test -race, which needs cgo;
# the binaries build without it), Java 17 and Maven (deploy/kafka/kafka.sh)
# are expected on the machine.
set -euo pipefail
need=()
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# The Python client's tests run in a venv (scripts/python-env.sh); Debian
# ships venv's pip bootstrap apart from python3.
if ! command -v python3 >/dev/null 2>&1; then
  need+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
{ command -v ip && command -v tc; } >/dev/null 2>&1 || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
  echo "deps.sh: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
for tool in go gcc java mvn; do
  command -v "$tool" >/dev/null 2>&1 || { echo "deps.sh: $tool is required but not installed" >&2; exit 1; }
done
